"""``balancedet predict`` decodes images as training does: EXIF orientation applied, 16-bit scaled.

Boxes are reported in the image as displayed (the pixels the annotation tools show), and the drawn
picture is that image, not the stored pixels nor a clipped-white 16-bit conversion.
"""

import json

import numpy as np
import pytest
from PIL import Image

from balancedet.engine.predict import predict_images
from balancedet.engine.train import train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_data):
    from balancedet.engine.config import load_config
    from tests.engine.conftest import TINY_RUN

    config = load_config("retinanet_digits", [f"data.dataset={tiny_data}", *TINY_RUN, "train.epochs=1"])
    out = train(config, output=tmp_path_factory.mktemp("run") / "run", verbose=False)["output"]
    return str(out / "weights" / "last.pt")


def rotated_jpeg(path, stored_wh=(96, 40)):
    """A JPEG stored ``stored_wh`` with EXIF orientation 6 (displayed rotated 90 degrees: 40 x 96)."""
    pixels = np.zeros((stored_wh[1], stored_wh[0], 3), np.uint8)
    pixels[:, : stored_wh[0] // 2] = 200  # left half bright in the stored pixels
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif.tobytes(), quality=95)


def test_predict_reports_boxes_and_draws_in_the_displayed_image(checkpoint, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rotated_jpeg(folder / "rotated.jpg")
    # 16-bit grayscale at 32896 = 128 / 255 of full scale: mid-grey, which Image.convert("RGB") clips to white
    Image.fromarray(np.full((48, 64), 32896, np.uint16)).save(folder / "gray16.png")

    result = predict_images(checkpoint, [folder], output=tmp_path / "pred", score_thresh=0.0)
    results = json.loads((result["output"] / "predictions.json").read_text())
    rotated = [r for r in results if r["file_name"].endswith("rotated.jpg")]
    assert rotated, "the tiny model gives candidates at score 0 in every image"
    for r in rotated:  # displayed size is 40 wide x 96 high: no box may reach past x = 40
        x, y, w, h = r["bbox"]
        assert -1e-3 <= x and x + w <= 40 + 1e-3 and -1e-3 <= y and y + h <= 96 + 1e-3, r["bbox"]

    drawn = Image.open(result["output"] / "rotated_pred.jpg")
    assert drawn.size == (40, 96)
    gray = np.asarray(Image.open(result["output"] / "gray16_pred.jpg").convert("L"), dtype=np.float64)
    # boxes are drawn in colour over part of it; the median pixel is the picture's own grey
    assert abs(np.median(gray) - 128) <= 2, np.median(gray)


def test_predict_names_the_file_that_cannot_be_decoded(checkpoint, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ValueError, match="broken.png"):
        predict_images(checkpoint, [bad], output=tmp_path / "pred")
