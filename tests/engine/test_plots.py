"""``plot_image_grid`` (ultralytics' ``val_batch*`` mosaics) and the grids ``write_eval_artifacts`` writes."""

import numpy as np
import pytest
import torch
from PIL import Image

from balancedet.data import DetectionDataset
from balancedet.data.records import ImageRecord
from balancedet.engine.evaluate import write_eval_artifacts
from balancedet.engine.plots import GRID_PALETTE, grid_layout, plot_image_grid

NAMES = ["cat", "dog", "bird"]
NO_BOXES = np.zeros((0, 4), dtype=np.float32)
NO_LABELS = np.zeros(0, dtype=np.int64)


def solid(color, size=(128, 128)):
    return Image.new("RGB", size, color)


def colors_in(image, box):
    """The set of RGB colours inside ``box`` (left, top, right, bottom) of ``image``."""
    pixels = np.asarray(image.crop(box)).reshape(-1, 3)
    return {tuple(int(v) for v in p) for p in np.unique(pixels, axis=0)}


@pytest.mark.parametrize(("count", "layout", "size"), [(1, (1, 1), (320, 320)), (5, (2, 3), (960, 640)),
                                                       (16, (4, 4), (1280, 1280))])  # fmt: skip
def test_grid_size_and_tile_layout(count, layout, size):
    colors = [(10 * i, 200 - 10 * i, 50) for i in range(count)]
    grid = plot_image_grid([solid(c) for c in colors], [NO_BOXES] * count, [NO_LABELS] * count, None, NAMES, None)
    assert grid_layout(count) == layout
    assert grid.size == size
    rows, cols = layout
    for i, color in enumerate(colors):  # image i fills tile i, row by row, scaled up from 128 to 320 px
        x0, y0 = (i % cols) * 320, (i // cols) * 320
        assert colors_in(grid, (x0 + 10, y0 + 10, x0 + 310, y0 + 310)) == {color}
    for i in range(count, rows * cols):  # the cells after the last image stay white
        x0, y0 = (i % cols) * 320, (i // cols) * 320
        assert colors_in(grid, (x0, y0, x0 + 320, y0 + 320)) == {(255, 255, 255)}


def test_small_images_are_scaled_up_and_large_ones_kept_within_the_mosaic_limit():
    half = Image.new("RGB", (128, 128), (255, 0, 0))
    half.paste((0, 0, 255), (64, 0, 128, 128))  # right half blue
    grid = plot_image_grid([half], [NO_BOXES], [NO_LABELS], None, NAMES, None)
    assert colors_in(grid, (5, 5, 158, 315)) == {(255, 0, 0)}  # the edge at 64 px is at 160 in the tile
    assert colors_in(grid, (162, 5, 315, 315)) == {(0, 0, 255)}

    big = plot_image_grid([solid((0, 90, 0), (1000, 750))] * 16, [NO_BOXES] * 16, [NO_LABELS] * 16, None, NAMES, None)
    assert big.size == (1920, 1920)  # 4 tiles of 480 px: the 1000 px images are scaled down
    alone = plot_image_grid([solid((0, 90, 0), (1000, 750))], [NO_BOXES], [NO_LABELS], None, NAMES, None)
    assert alone.size == (1000, 1000)  # one image keeps its size
    assert plot_image_grid([], [], [], None, NAMES, None) is None


def test_labels_are_drawn_on_a_band_of_the_class_colour():
    box = np.array([[40.0, 60.0, 100.0, 120.0]])  # x 100-250, y 150-300 in the 320 px tile
    grid = plot_image_grid([solid((128, 128, 128))], [box], [np.array([2])], None, NAMES, None)
    color = GRID_PALETTE[2]
    band = colors_in(grid, (100, 110, 250, 150))  # above the box: the label "bird"
    assert color in band
    assert band & {(0, 0, 0), (255, 255, 255)}  # and its text
    assert color in colors_in(grid, (100, 200, 104, 250))  # the box's left edge
    assert colors_in(grid, (120, 170, 230, 280)) == {(128, 128, 128)}  # not filled

    # predictions: the score in the label, nothing under the display threshold
    scores = [torch.tensor([0.9, 0.1])]
    boxes = [torch.tensor([[40.0, 60.0, 100.0, 120.0], [5.0, 5.0, 30.0, 30.0]])]
    pred = plot_image_grid([solid((128, 128, 128))], boxes, [torch.tensor([1, 0])], scores, NAMES, None)
    assert GRID_PALETTE[1] in colors_in(pred, (100, 110, 250, 150))
    assert GRID_PALETTE[0] not in colors_in(pred, (0, 0, 320, 320))
    gt = plot_image_grid([solid((128, 128, 128))], [boxes[0][:1]], [torch.tensor([1])], None, NAMES, None)
    label_width = [np.nonzero((np.asarray(g)[110:150] == GRID_PALETTE[1]).all(-1).any(0))[0].max() for g in (gt, pred)]
    assert label_width[1] > label_width[0]  # "dog 0.90" is longer than "dog"


def test_write_eval_artifacts_writes_label_and_prediction_grids(tmp_path):
    records = []
    for i in range(20):
        file = tmp_path / f"{i:03d}.png"
        solid((20 + 10 * i, 60, 90)).save(file)
        records.append(
            ImageRecord(
                file=file,
                width=128,
                height=128,
                image_id=i + 1,
                boxes=np.array([[10, 10, 60, 70]], dtype=np.float32),
                labels=np.array([i % 3]),
                iscrowd=np.zeros(1, dtype=bool),
                difficult=np.zeros(1, dtype=bool),
                areas=np.array([3000.0], dtype=np.float32),
            )
        )
    dataset = DetectionDataset(records, NAMES, [1, 2, 3])
    predictions = []
    for i in range(len(dataset)):
        target = dataset[i][1]
        det = {"boxes": torch.tensor([[12.0, 8.0, 58.0, 72.0]]), "scores": torch.tensor([0.8]),
               "labels": torch.tensor([i % 3])}  # fmt: skip
        predictions.append((target, det))
    report = {
        "per_class_ap": [0.5, 0.5, 0.5],
        "precision50": np.full((101, 3), 0.5),
        "recall_thresholds": np.linspace(0, 1, 101),
    }
    out = tmp_path / "run"
    out.mkdir()
    write_eval_artifacts(report, predictions, dataset, out, 5, batch_size=8)
    # 20 images in batches of 8: 3 batches (8, 8, 4 images), though 5 were asked for
    assert sorted(p.name for p in out.glob("val_batch*")) == [
        f"val_batch{i}_{kind}.jpg" for i in range(3) for kind in ("labels", "pred")
    ]
    for i, size in enumerate([(960, 960), (960, 960), (640, 640)]):
        for kind in ("labels", "pred"):
            with Image.open(out / f"val_batch{i}_{kind}.jpg") as grid:
                assert grid.size == size
    assert (out / "PR_curve.png").is_file()
    assert (out / "confusion_matrix.png").is_file()

    (tmp_path / "big").mkdir()
    write_eval_artifacts(report, predictions, dataset, tmp_path / "big", 1, batch_size=64)
    with Image.open(tmp_path / "big" / "val_batch0_labels.jpg") as grid:
        assert grid.size == (1280, 1280)  # a batch larger than 16 is plotted as its first 16 images
