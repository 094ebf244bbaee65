"""The recipe for a user's dataset: an input size at which the smallest class stays matchable, the
anchor check against a brute-force reference, a schedule floor, ``--set`` keys kept, the CLI path."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import balancedet.engine.train as train_module
from balancedet import cli
from balancedet.boxes import box_iou
from balancedet.boxes.anchors import FPN_STRIDES, AnchorGenerator, feature_map_sizes
from balancedet.data import DetectionTransform, load_data_spec
from balancedet.engine import recipe
from balancedet.engine.config import load_config
from balancedet.engine.recipe import (
    MIN_STEPS,
    WARMUP_SHARE,
    anchor_best_iou,
    atss_covered,
    box_table,
    check_anchors,
    choose_schedule,
    explicit_keys,
    fit_recipe,
    resized_sizes,
    target_object_side,
)

WIDTH, HEIGHT = 640, 480


def write_photos(root, num_train: int = 32, num_val: int = 4, speck: float = 15.0) -> str:
    """COCO json of 640x480 photos: one ~150-px 'big' object each, a ~``speck``-px 'speck' in every other one.

    At the digits preset's 128 px the specks shrink to 4 px, which no P3 anchor or point can match.
    """
    rng = np.random.default_rng(0)
    folder = root / "images"
    folder.mkdir(parents=True)
    for split, count in (("train", num_train), ("val", num_val)):
        images, annotations = [], []
        for index in range(count):
            name = f"{split}{index}.png"
            Image.new("RGB", (WIDTH, HEIGHT), (90, 120, 150)).save(folder / name)
            images.append({"id": index + 1, "file_name": name, "width": WIDTH, "height": HEIGHT})
            objects = [(2, rng.uniform(130, 170))] + ([(1, rng.uniform(speck - 1, speck + 1))] if index % 2 else [])
            for category, side in objects:
                x, y = rng.uniform(0, WIDTH - side), rng.uniform(0, HEIGHT - side)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": index + 1,
                        "category_id": category,
                        "bbox": [x, y, side, side * rng.uniform(1.0, 1.3) if y + 1.3 * side < HEIGHT else side],
                        "iscrowd": 0,
                    }
                )
        categories = [{"id": 1, "name": "speck"}, {"id": 2, "name": "big"}]
        file = root / f"{split}.json"
        file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    data = root / "photos.yaml"
    data.write_text(
        "format: coco\ntrain: {images: images, annotations: train.json}\nval: {images: images, annotations: val.json}\n"
    )
    return str(data)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("photos"))


def _fit(data: str, *overrides: str):
    config = load_config("user_data", [f"data.dataset={data}", *overrides])
    return fit_recipe(config, load_data_spec(data), explicit_keys(list(overrides)))


def test_the_smallest_class_sets_the_input_size(photos):
    config, lines = _fit(photos)
    table = box_table(load_data_spec(photos).load("train"))
    target, _ = target_object_side(config["model"])
    data = config["data"]
    # ~15-px specks in 480-px photos: 16 px needs a little more than the native 480, rounded up to 32
    sides = np.minimum(table.boxes[:, 2] - table.boxes[:, 0], table.boxes[:, 3] - table.boxes[:, 1])
    small = np.percentile(sides[table.labels == 0], 5)
    assert 14 < small < 15 and target == 16
    assert data["min_size"] == math.ceil(16 / small * 480 / 32) * 32 == 544
    assert data["max_size"] == math.ceil(544 * 4 / 3)
    new_w, new_h = resized_sizes(table.widths, table.heights, data["min_size"], data["max_size"])
    scale = (new_h / table.heights)[table.image]
    assert np.percentile((sides * scale)[table.labels == 0], 5) >= target
    assert any("class 'speck'" in line and "data.min_size 544, data.max_size 726" in line for line in lines)

    # the digits preset's 128 px loses the specks; the recipe's size gives every class a positive
    before = check_anchors(table, config["model"], 128, None, 128)
    after = check_anchors(table, config["model"], data["min_size"], data["max_size"], 128)
    assert before.per_class[0] < 0.5 and before.per_class[1] == 1.0
    assert min(after.per_class.values()) >= recipe.MIN_BPR
    assert not any("warning" in line for line in lines)


def test_upscaling_and_memory_caps_say_what_stays_small(tmp_path):
    data = write_photos(tmp_path, num_train=8, num_val=2, speck=3.0)
    config, lines = _fit(data)
    # 3-px specks would need ~2800 px: 2x native (960) is already over the budget of 8 Mi pixels a batch
    assert config["data"]["min_size"] < 2 * 480
    size_line = next(line for line in lines if "data.min_size" in line)
    assert "capped at the memory budget" in size_line and "'speck'" in size_line
    assert any("warning: best possible recall" in line and "'speck'" in line for line in lines)
    small_batch, _ = _fit(data, "train.batch_size=2")
    assert small_batch["data"]["min_size"] == 960  # 2x native, the upscaling cap


def test_schedule_floor_on_a_tiny_dataset_and_the_preset_epochs_on_a_large_one():
    train = load_config("user_data")["train"]
    values, lines = choose_schedule(24, train, set())
    steps = 1  # 24 images, batch 16: one full batch, the partial one dropped
    assert values["epochs"] * steps >= MIN_STEPS
    assert values["warmup_iters"] <= WARMUP_SHARE * values["epochs"] * steps
    assert values["milestones"] == [round(values["epochs"] * 8 / 12), round(values["epochs"] * 11 / 12)]
    assert values["eval_interval"] == math.ceil(values["epochs"] / 10)
    assert "1000 steps (at least 1000)" in lines[0]

    values, _ = choose_schedule(290, train, set())
    assert values["epochs"] == math.ceil(MIN_STEPS / 18) and values["warmup_iters"] == 100

    values, _ = choose_schedule(100_000, train, set())
    assert values["epochs"] == 12 and values["milestones"] == [8, 11] and values["eval_interval"] == 2

    values, lines = choose_schedule(24, {**train, "epochs": 2}, {"train.epochs"})
    assert values["epochs"] == 2 and values["warmup_iters"] == 0  # 1/10 of 2 steps
    assert values["milestones"] == [1.33, 1.83]
    assert any("train.epochs=2 kept from --set" in line for line in lines)
    assert any("warning: 2 steps is fewer than the 1000" in line for line in lines)


def test_explicit_keys_are_never_overridden(photos):
    overrides = [
        "model.type=retinanet",
        "model.anchor_sizes=[8, 16, 32, 64, 128]",
        "data.min_size=200",
        "train.epochs=3",
        "train.milestones=[2]",
        "train.warmup_iters=7",
        "train.eval_interval=3",
    ]
    config, lines = _fit(photos, *overrides)
    assert config["model"]["anchor_sizes"] == [8, 16, 32, 64, 128]
    assert config["data"]["min_size"] == 200 and config["data"]["max_size"] > 200
    train = config["train"]
    assert (train["epochs"], train["milestones"], train["warmup_iters"], train["eval_interval"]) == (3, [2], 7, 3)
    for key in ("data.min_size=200", "train.epochs=3", "train.milestones=[2]", "train.warmup_iters=7"):
        assert any(f"{key} kept from --set" in line for line in lines), key
    assert not any(line.startswith("recipe: model.anchor_sizes") for line in lines)  # explicit: not fitted


def test_retinanet_anchors_are_fitted_when_not_given(photos):
    config, lines = _fit(photos, "model.type=retinanet")
    # the paper's 32-px P3 anchors need 23-px boxes (740 px input); halved they need 20 px and cover more
    assert config["model"]["anchor_sizes"] == [16, 32, 64, 128, 256]
    assert any(line.startswith("recipe: model.anchor_sizes [16, 32, 64, 128, 256]: half") for line in lines)


def test_anchor_best_iou_matches_a_brute_force_search():
    generator = AnchorGenerator((16, 32, 64, 128, 256), FPN_STRIDES)
    shapes = []
    for level in range(generator.num_levels):
        base = generator.base_anchors(level).numpy()
        shapes.append(np.stack((base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]), axis=1))
    rng = np.random.default_rng(1)
    canvases = np.array([[256, 384], [384, 256]])
    boxes, image = [], []
    for index, (height, width) in enumerate(canvases):
        wh = np.exp(rng.uniform(np.log(3), np.log(300), size=(200, 2)))
        wh = np.minimum(wh, [width - 1, height - 1])
        xy = rng.uniform(0, 1, size=(200, 2)) * ([width, height] - wh)
        boxes.append(np.concatenate([xy, xy + wh], axis=1))
        image += [index] * 200
    boxes, image = np.concatenate(boxes), np.array(image)
    fast = anchor_best_iou(boxes, canvases[image], shapes, FPN_STRIDES)
    for index, canvas in enumerate(canvases):
        anchors = generator(feature_map_sizes(tuple(canvas)), dtype=torch.float64)
        brute = box_iou(torch.from_numpy(boxes[image == index]), anchors).amax(dim=1).numpy()
        np.testing.assert_allclose(fast[image == index], brute, rtol=1e-12, atol=1e-12)
    bpr = (fast >= 0.5).mean()
    assert 0.3 < bpr < 1.0  # the constructed sizes reach below the smallest anchor: a real check


def test_atss_covered_needs_an_anchor_point_inside_the_box():
    # P3 points at multiples of 8: the first 4-px box holds none, the second holds (8, 8), the third many
    boxes = np.array([[1.0, 1.0, 5.0, 5.0], [6.0, 6.0, 10.0, 10.0], [20.0, 20.0, 60.0, 70.0]])
    covered, evaluated = atss_covered(boxes, np.zeros(3, dtype=np.int64), np.array([[128, 128]]), 8.0, {})
    assert evaluated.all() and covered.tolist() == [False, True, True]


def test_resized_sizes_follow_the_transform():
    sizes = [(640, 480), (333, 500), (1000, 200), (480, 640), (512, 512)]
    new_w, new_h = resized_sizes(np.array([s[0] for s in sizes]), np.array([s[1] for s in sizes]), 512, 683)
    for (width, height), w, h in zip(sizes, new_w, new_h, strict=True):
        out = DetectionTransform(train=False, min_size=512, max_size=683)(
            torch.zeros(3, height, width, dtype=torch.uint8),
            torch.zeros(0, 4),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(0, dtype=torch.bool),
        )
        assert tuple(out["image"].shape[-2:]) == (h, w)


def test_cli_prints_the_recipe_and_keeps_config_without_it(photos, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(train_module, "train", lambda config, output=None, **_: seen.append(config))
    assert cli.main(["train", "--data", photos, "--set", "train.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "recipe: 32 training images" in out and "data.min_size 544" in out
    assert "train.epochs=2 kept from --set" in out
    assert seen[-1]["model"]["type"] == "gfl" and seen[-1]["data"]["min_size"] == 544
    assert seen[-1]["train"]["epochs"] == 2

    # --config, and the built-in digits: their preset as it is, no recipe
    assert cli.main(["train", "--data", photos, "--config", "retinanet_digits"]) == 0
    assert cli.main(["train", "--data", "digits"]) == 0
    assert "recipe" not in capsys.readouterr().out
    for config in seen[-2:]:
        assert config["data"]["min_size"] == 128 and config["train"]["epochs"] == 5


def test_cli_recipe_reports_a_malformed_record(tmp_path, capsys):
    data = write_photos(tmp_path, num_train=2, num_val=1)
    annotations = json.loads((tmp_path / "train.json").read_text())
    annotations["annotations"][0]["bbox"] = [10, 10, -5, 20]
    (tmp_path / "train.json").write_text(json.dumps(annotations))
    assert cli.main(["train", "--data", data]) == 2
    err = capsys.readouterr().err
    assert "train.json: annotation id 1 (image id 1)" in err and "negative width" in err


def test_a_recipe_run_trains(tmp_path, capsys):
    # a couple of steps at 64 px: the recipe's configuration (fractional milestones included) trains
    data = write_photos(tmp_path / "data", num_train=16, num_val=2)
    code = cli.main(
        [
            "train",
            "--data",
            data,
            "--output",
            str(tmp_path / "run"),
            *("--set", "data.min_size=64", "--set", "train.epochs=1", "--set", "train.batch_size=8"),
            *("--set", "model.fpn_channels=16", "--set", "model.head_channels=16", "--set", "train.workers=0"),
        ]
    )
    assert code == 0
    assert "recipe: 16 images / batch 8 = 2 steps an epoch; 1 epoch = 2 steps" in capsys.readouterr().out
    assert (tmp_path / "run" / "weights" / "last.pt").is_file()
