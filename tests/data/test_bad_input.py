"""The bad-input corpus (issue 12): each defect is a file the test writes; each gets an error naming the
file and the record, or with ``skip_bad`` a warning with a count, never a traceback or a silent wrong
answer. Checked at the dataset level and, for several cases, through ``balancedet train``."""

from __future__ import annotations

import csv
import importlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from balancedet import cli
from balancedet.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BadRecordWarning,
    DetectionDataset,
    DetectionTransform,
    build_dataset,
    load_coco,
    load_yolo,
)
from balancedet.data import dataset as dataset_module
from balancedet.data.dataset import checked_dataset
from balancedet.data.images import BACKGROUND, BadImageError, image_size, read_image
from balancedet.data.records import RecordSet, make_record
from balancedet.data.verify import check_images
from balancedet.engine.data import SeededView
from tests.data.scene import write_voc, write_yolo
from tests.engine.conftest import TINY_RUN

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def picture(width: int, height: int, seed: int = 0) -> np.ndarray:
    """``(height, width, 3)`` uint8: gradients plus noise (a picture that JPEG and PNG do not flatten)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], axis=-1)
    return np.clip(smooth + rng.integers(-20, 21, smooth.shape), 0, 255).astype(np.uint8)


def jpeg_bytes(pixels: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95, **save)
    return buffer.getvalue()


def png_bytes(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **save)
    return buffer.getvalue()


def truncated_jpeg(path: Path) -> Path:
    data = jpeg_bytes(picture(64, 48))
    path.write_bytes(data[: len(data) // 2])
    return path


def corrupt_png(path: Path) -> Path:
    """Rewrite the PNG at ``path`` (a new 64x48 one if there is none) with the middle of its pixel data inverted."""
    data = bytearray(path.read_bytes() if path.is_file() else png_bytes(Image.fromarray(picture(64, 48))))
    start = data.find(b"IDAT") + 4
    middle = start + int.from_bytes(data[start - 8 : start - 4], "big") // 2
    data[middle - 2 : middle + 2] = bytes(b ^ 0xFF for b in data[middle - 2 : middle + 2])
    path.write_bytes(bytes(data))
    return path


def write_coco_split(root: Path, split: str, images: list[tuple[int, str, int, int, list]]) -> None:
    """``root/images/<split>/`` (the files written by the caller) and ``root/<split>.json`` listing ``images``
    as ``(id, file_name, width, height, [(bbox, category_id), ...])``."""
    entries, annotations = [], []
    for image_id, name, width, height, objects in images:
        entries.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for bbox, category in objects:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category, "bbox": bbox, "iscrowd": 0}
            )
    data = {"images": entries, "annotations": annotations, "categories": CATEGORIES}
    (root / f"{split}.json").write_text(json.dumps(data))


def image_dir(root: Path, split: str) -> Path:
    folder = root / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_yaml(root: Path) -> str:
    (root / "data.yaml").write_text(
        "format: coco\n"
        "train: {images: images/train, annotations: train.json}\n"
        "val: {images: images/val, annotations: val.json}\n"
    )
    return str(root / "data.yaml")


def one_image_set(tmp_path: Path, name: str, width: int, height: int, objects: list | None = None) -> RecordSet:
    """A COCO split of one image ``images/train/<name>`` (already written), image id 3."""
    write_coco_split(tmp_path, "train", [(3, name, width, height, objects or [])])
    return load_coco(tmp_path / "train.json", image_dir(tmp_path, "train"))


# --------------------------------------------------------------------------------------------------
# Files that cannot be decoded: a ValueError naming the file and the image id


def written(data: bytes):
    def write(path: Path) -> Path:
        path.write_bytes(data)
        return path

    return write


UNREADABLE = {
    "truncated.jpg": truncated_jpeg,
    "corrupt.png": corrupt_png,
    "empty.jpg": written(b""),
    "text.png": written(b"not an image"),
}
UNREADABLE_MESSAGES = {
    "truncated.jpg": "cannot decode the image (OSError: image file is truncated",
    "corrupt.png": "cannot decode the image (SyntaxError: broken PNG file",
    "empty.jpg": "the image file is empty (0 bytes)",
    "text.png": "cannot decode the image (UnidentifiedImageError: cannot identify image file",
}


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_an_unreadable_file_is_an_error_naming_the_file_and_the_image_id(tmp_path, name):
    path = UNREADABLE[name](image_dir(tmp_path, "train") / name)
    with pytest.raises(BadImageError, match=re.escape(f"{path}: image id 3: {UNREADABLE_MESSAGES[name]}")):
        read_image(path, 3)
    # the pre-flight says the same, before any training, with the annotations' file in the skip warning
    records = one_image_set(tmp_path, name, 64, 48)
    with pytest.raises(ValueError, match=re.escape(f"{path}: image id 3: {UNREADABLE_MESSAGES[name]}")):
        check_images(records, tmp_path / "train.json", skip_bad=False)


def test_voc_and_yolo_splits_get_the_same_pre_flight(tmp_path):
    _, voc_images = write_voc(tmp_path / "voc")
    (tmp_path / "voc" / "data.yaml").write_text("format: voc\ntrain: {images: images, annotations: Annotations}\n")
    _, yolo_images = write_yolo(tmp_path / "yolo")
    (tmp_path / "yolo" / "data.yaml").write_text("format: yolo\ntrain: images\nnames: [cat, dog]\n")
    for root, images in ((tmp_path / "voc", voc_images), (tmp_path / "yolo", yolo_images)):
        corrupt_png(images / "b.png")  # the header still reads: only the pixels are broken
        with pytest.raises(ValueError, match=re.escape(f"{images / 'b.png'}: image id 2: cannot decode the image")):
            build_dataset(root / "data.yaml", "train", train=False)
        with pytest.warns(BadRecordWarning, match="skipped 1 malformed record"):
            dataset = build_dataset(root / "data.yaml", "train", train=False, skip_bad=True)
        assert [r.file.name for r in dataset.records] == ["a.png", "c.png"]


def test_a_file_gone_after_loading_is_named(tmp_path):
    path = image_dir(tmp_path, "train") / "gone.png"
    Image.fromarray(picture(8, 8)).save(path)
    records = one_image_set(tmp_path, "gone.png", 8, 8)
    path.unlink()
    dataset = DetectionDataset.from_record_set(records)
    with pytest.raises(BadImageError, match=re.escape(f"{path}: image id 3: image file not found")):
        dataset[0]


def test_a_png_byte_flip_that_still_inflates_is_caught_by_its_crc(tmp_path):
    # A single flipped bit in compressed PNG data often decodes into wrong pixels without any error from
    # Image.load(); the chunk CRC (Image.verify, which read_image runs first) catches it.
    y, x = np.mgrid[0:48, 0:64]
    original = np.stack([x * 3, y * 4, x + y], axis=-1).astype(np.uint8)  # smooth: well compressed
    clean = png_bytes(Image.fromarray(original))
    start = clean.find(b"IDAT") + 4
    path = tmp_path / "flipped.png"
    silently_wrong = False
    for offset in range(8, int.from_bytes(clean[start - 8 : start - 4], "big")):
        data = bytearray(clean)
        data[start + offset] ^= 0x10
        path.write_bytes(bytes(data))
        try:
            with Image.open(path) as image:
                silently_wrong = not np.array_equal(np.asarray(image.convert("RGB")), original)
        except (OSError, SyntaxError, ValueError):
            continue
        if silently_wrong:
            break
    assert silently_wrong, "no flip of the test picture decodes without an error"
    with pytest.raises(BadImageError, match=re.escape(f"{path}: image id 9: cannot decode the image (SyntaxError")):
        read_image(path, 9)


def test_load_truncated_images_stays_off_and_is_overridden_when_someone_sets_it(tmp_path, monkeypatch):
    # importing balancedet's commands must not have turned it on
    for module in ("balancedet.engine.train", "balancedet.engine.evaluate", "balancedet.engine.predict"):
        importlib.import_module(module)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    path = truncated_jpeg(tmp_path / "truncated.jpg")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with Image.open(path) as image:
        image.load()  # with the flag, Pillow itself decodes the half file without a word
    with pytest.raises(BadImageError, match="image file is truncated"):
        read_image(path, 1)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is put back


def test_skip_bad_drops_unreadable_images_with_one_warning_and_a_count(tmp_path):
    folder = image_dir(tmp_path, "train")
    truncated_jpeg(folder / "truncated.jpg")
    corrupt_png(folder / "corrupt.png")
    Image.fromarray(picture(64, 48)).save(folder / "good.png")
    box = ([4, 4, 20, 20], 1)
    write_coco_split(
        tmp_path,
        "train",
        [(1, "truncated.jpg", 64, 48, [box]), (2, "good.png", 64, 48, [box]), (3, "corrupt.png", 64, 48, [box])],
    )
    records = load_coco(tmp_path / "train.json", folder)
    with pytest.raises(ValueError, match=re.escape(f"{folder / 'truncated.jpg'}: image id 1")):
        check_images(records, tmp_path / "train.json", skip_bad=False)  # the first in record order
    with pytest.warns(BadRecordWarning, match=re.escape(f"{tmp_path / 'train.json'}: skipped 2 malformed")) as seen:
        kept = check_images(records, tmp_path / "train.json", skip_bad=True)
    assert len(seen) == 1
    assert [r.image_id for r in kept.records] == [2]
    assert len(kept.skipped) == 2 and "image id 3" in kept.skipped[1]
    assert check_images(kept, tmp_path / "train.json", skip_bad=False) is kept


# --------------------------------------------------------------------------------------------------
# Modes: every one to 8-bit RGB, by the value range of its type (not clipped)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    # the 8-bit picture u is the 16-bit picture u * 257 (0xAB -> 0xABAB); anything within 128 of that
    # is nearer to u * 257 than to any other level, so it must read back as u exactly
    rng = np.random.default_rng(1)
    u = np.tile(np.arange(256, dtype=np.int64), (16, 1))  # mean 127.5
    v = np.clip(u * 257 + rng.integers(-128, 129, u.shape), 0, 65535).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(v).save(path)
    with Image.open(path) as image:
        assert image.mode == "I;16"
    pixels = read_image(path, 1)
    assert pixels.shape == (3, 16, 256) and pixels.dtype == torch.uint8
    for channel in pixels:
        np.testing.assert_array_equal(channel.numpy(), u)
    assert pixels.float().mean().item() == pytest.approx(127.5)


def test_16_bit_big_endian_and_signed_tiffs_and_32_bit_use_their_types_range(tmp_path):
    big = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.frombytes("I;16B", (4, 1), big.astype(">u2").tobytes()).save(tmp_path / "big.tif")
    # SampleFormat 2: the same bits are signed 16-bit samples, -32768..32767
    signed = np.array([[-32768, -1, 0, 32767]], dtype=np.int16)
    Image.fromarray(signed.view(np.uint16)).save(tmp_path / "signed.tif", tiffinfo={339: 2})
    wide = np.array([[-(2**31), -1, 0, 2**31 - 1]], dtype=np.int32)
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    expected = {
        "big.tif": np.round(big / 65535 * 255),
        "signed.tif": np.round((signed.astype(np.float64) + 32768) / 65535 * 255),
        "wide.tif": np.round((wide.astype(np.float64) + 2**31) / (2**32 - 1) * 255),
    }
    modes = {"big.tif": "I;16B", "signed.tif": "I", "wide.tif": "I"}
    for name, values in expected.items():
        with Image.open(tmp_path / name) as image:
            assert image.mode == modes[name]
        pixels = read_image(tmp_path / name, 1)
        np.testing.assert_array_equal(pixels[0].numpy(), values, err_msg=name)
        assert torch.equal(pixels[0], pixels[2])


def test_float_images_in_unit_range_and_out_of_it(tmp_path):
    u = np.arange(0, 256, 5, dtype=np.float64)[None]
    Image.fromarray((u / 255).astype(np.float32)).save(tmp_path / "unit.tif")
    np.testing.assert_array_equal(read_image(tmp_path / "unit.tif", 1)[1].numpy(), u)
    Image.fromarray(np.array([[0.0, 3.5]], dtype=np.float32)).save(tmp_path / "raw.tif")
    message = f"{tmp_path / 'raw.tif'}: image id 2: float image with values in [0, 3.5]"
    with pytest.raises(BadImageError, match=re.escape(message)):
        read_image(tmp_path / "raw.tif", 2)


def test_grayscale_bilevel_and_cmyk(tmp_path):
    gray = picture(20, 10)[:, :, 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    for channel in read_image(tmp_path / "gray.png"):
        np.testing.assert_array_equal(channel.numpy(), gray)
    bits = picture(20, 10)[:, :, 1] > 128
    Image.fromarray(bits).save(tmp_path / "bits.png")
    with Image.open(tmp_path / "bits.png") as image:
        assert image.mode == "1"
    np.testing.assert_array_equal(read_image(tmp_path / "bits.png")[0].numpy(), np.where(bits, 255, 0))
    cmyk = picture(20, 10, seed=2)
    k = picture(20, 10, seed=3)[:, :, :1]
    Image.frombytes("CMYK", (20, 10), np.concatenate([cmyk, k], axis=2).tobytes()).save(tmp_path / "cmyk.tif")
    # the device-independent formula: R = (1 - C) (1 - K), in 8 bits
    expected = np.round((255 - cmyk.astype(np.float64)) * (255 - k) / 255)
    np.testing.assert_allclose(read_image(tmp_path / "cmyk.tif").permute(1, 2, 0).numpy(), expected, atol=1)


def test_transparency_is_composited_over_the_mean_colour(tmp_path):
    assert BACKGROUND == tuple(round(255 * m) for m in IMAGENET_MEAN)
    background = np.asarray(BACKGROUND, dtype=np.float64)
    colour = picture(16, 8).astype(np.float64)
    alpha = picture(16, 8, seed=5)[:, :, :1].astype(np.float64)
    alpha[0, :4] = 0  # fully transparent
    alpha[1, :4] = 255  # opaque
    expected = np.round((colour * alpha + background * (255 - alpha)) / 255)
    Image.fromarray(np.concatenate([colour, alpha], axis=2).astype(np.uint8)).save(tmp_path / "rgba.png")
    got = read_image(tmp_path / "rgba.png").permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, expected, atol=0)
    np.testing.assert_array_equal(got[0, :4], np.tile(BACKGROUND, (4, 1)))

    gray = colour[:, :, :1]
    Image.fromarray(np.concatenate([gray, alpha], axis=2).astype(np.uint8)).save(tmp_path / "la.png")
    expected_la = np.round((gray * alpha + background * (255 - alpha)) / 255)
    np.testing.assert_array_equal(read_image(tmp_path / "la.png").permute(1, 2, 0).numpy(), expected_la)

    palette = [(200, 10, 10), (10, 200, 10), (10, 10, 200)]
    indices = np.arange(16 * 8).reshape(8, 16) % 3
    image = Image.fromarray(indices.astype(np.uint8)).convert("P")
    image.putpalette([v for rgb in palette for v in rgb])
    image.save(tmp_path / "palette.png", transparency=0)
    got = read_image(tmp_path / "palette.png").permute(1, 2, 0).numpy()
    expected_p = np.where((indices == 0)[:, :, None], BACKGROUND, np.asarray(palette)[indices])
    np.testing.assert_array_equal(got, expected_p)
    # a transparent pixel is what padding is: 0 once normalised
    normalised = DetectionTransform(train=False, min_size=None)(
        torch.from_numpy(got.transpose(2, 0, 1).copy()), torch.zeros(0, 4), torch.zeros(0).long(), torch.zeros(0).bool()
    )["image"]
    tolerance = 0.5 / 255 / min(IMAGENET_STD)
    assert normalised[:, 0, 0].abs().max().item() < tolerance


# --------------------------------------------------------------------------------------------------
# EXIF orientation: images are read as displayed, sizes compare as displayed

# EXIF 2.32, tag 274: where the stored row 0 and column 0 are shown
EXIF_SIDES = {
    1: ("top", "left"),
    2: ("top", "right"),
    3: ("bottom", "right"),
    4: ("bottom", "left"),
    5: ("left", "top"),
    6: ("right", "top"),
    7: ("right", "bottom"),
    8: ("left", "bottom"),
}


def displayed(stored: np.ndarray, orientation: int) -> np.ndarray:
    """The stored ``(H, W, ...)`` array as shown, from where EXIF says its row 0 and column 0 go."""
    row0, col0 = EXIF_SIDES[orientation]
    if row0 in ("left", "right"):
        shown = stored.swapaxes(0, 1)  # stored rows become columns, row 0 the left one
        if row0 == "right":
            shown = shown[:, ::-1]
        if col0 == "bottom":
            shown = shown[::-1]
        return shown
    shown = stored[::-1] if row0 == "bottom" else stored
    return shown[:, ::-1] if col0 == "right" else shown


def exif(orientation: int) -> bytes:
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags.tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_documented(tmp_path, orientation):
    path = tmp_path / "photo.jpg"
    path.write_bytes(jpeg_bytes(picture(40, 24), exif=exif(orientation)))
    with Image.open(path) as image:  # Pillow's decode ignores the tag: the stored pixels
        stored = np.asarray(image.convert("RGB"))
    pixels = read_image(path, 1).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(pixels, displayed(stored, orientation))
    assert image_size(path) == ((24, 40) if orientation >= 5 else (40, 24))


def test_exif_rotated_boxes_are_annotated_as_displayed_and_a_stored_size_is_an_error(tmp_path):
    folder = image_dir(tmp_path, "train")
    stored = np.zeros((30, 40, 3), dtype=np.uint8)
    stored[4:12, 2:10] = 255  # an object at x 2..10, y 4..12 of the stored pixels
    Image.fromarray(stored).save(folder / "turned.png", exif=exif(6))
    assert image_size(folder / "turned.png") == (30, 40)  # a PNG's EXIF chunk ahead of the pixels
    mask = displayed(stored[:, :, 0] > 0, 6)
    rows, cols = np.nonzero(mask)
    bbox = [int(cols.min()), int(rows.min()), int(cols.max() + 1 - cols.min()), int(rows.max() + 1 - rows.min())]
    write_coco_split(tmp_path, "train", [(5, "turned.png", 30, 40, [(bbox, 1)])])
    records = load_coco(tmp_path / "train.json", folder)
    image, target = DetectionDataset.from_record_set(check_images(records, "train.json", skip_bad=False))[0]
    x1, y1, x2, y2 = target["boxes"][0].round().int().tolist()
    white = (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    inside = image[0, y1:y2, x1:x2]
    assert inside.numel() == 64 and torch.allclose(inside, torch.full_like(inside, white), atol=1e-4)
    assert image[0].gt(0).sum().item() == 64  # nothing white outside the box

    # the size of the stored pixels (a tool that ignored the tag) is an error that says why
    write_coco_split(tmp_path, "train", [(5, "turned.png", 40, 30, [])])
    records = load_coco(tmp_path / "train.json", folder)
    message = (
        f"{folder / 'turned.png'}: image id 5: the image is 30x40 but its annotation says 40x30 "
        "(its EXIF orientation 6 turns the stored 40x30 pixels"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        check_images(records, "train.json", skip_bad=False)


def test_yolo_scales_its_normalised_boxes_by_the_displayed_size(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    (images / "turned.jpg").write_bytes(jpeg_bytes(picture(40, 20), exif=exif(8)))
    (labels / "turned.txt").write_text("0 0.5 0.25 0.5 0.1\n")
    record = load_yolo(labels, images, ["cat"]).records[0]
    assert (record.width, record.height) == (20, 40)
    np.testing.assert_allclose(record.boxes, [[5, 8, 15, 12]])
    assert read_image(record.file, record.image_id, size=(record.width, record.height)).shape == (3, 40, 20)


# --------------------------------------------------------------------------------------------------
# Annotation defects: the loaders' errors, and skip_bad's count


def test_json_size_that_disagrees_with_the_file_is_found_by_the_pre_flight(tmp_path):
    folder = image_dir(tmp_path, "train")
    Image.fromarray(picture(40, 50)).save(folder / "b.png")
    records = one_image_set(tmp_path, "b.png", 41, 50)
    message = f"{folder / 'b.png'}: image id 3: the image is 40x50 but its annotation says 41x50"
    with pytest.raises(ValueError, match=re.escape(message)):
        check_images(records, tmp_path / "train.json", skip_bad=False)
    with pytest.warns(BadRecordWarning, match="skipped 1 malformed record"):
        assert check_images(records, tmp_path / "train.json", skip_bad=True).records == []


ANNOTATION_CASES = {
    "zero area": ([5, 5, 0, 10], 1, "bbox [5, 5, 0, 10] has zero width"),
    "zero height": ([5, 5, 10, 0], 1, "bbox [5, 5, 10, 0] has zero height"),
    "negative": ([5, 5, -4, 10], 1, "bbox [5, 5, -4, 10] has negative width"),
    "NaN": ([5, float("nan"), 4, 10], 1, "bbox [5, NaN, 4, 10] has a non-numeric or non-finite value"),
    "string": ([5, "5", 4, "x"], 1, 'bbox [5, "5", 4, "x"] has a non-numeric or non-finite value'),
    "out of image": ([50, 5, 20, 10], 1, "bbox [50, 5, 20, 10] lies outside the 64x48 image by more than 2 px"),
    "unknown category": ([5, 5, 4, 10], 9, "unknown category id 9"),
}


@pytest.mark.parametrize("case", sorted(ANNOTATION_CASES))
def test_box_and_category_defects_name_the_file_and_the_annotation(tmp_path, case):
    bbox, category, problem = ANNOTATION_CASES[case]
    folder = image_dir(tmp_path, "train")
    Image.fromarray(picture(64, 48)).save(folder / "a.png")
    write_coco_split(tmp_path, "train", [(3, "a.png", 64, 48, [([1, 1, 8, 8], 1), (bbox, category)])])
    message = f"{tmp_path / 'train.json'}: annotation id 2 (image id 3): {problem}"
    with pytest.raises(ValueError, match=re.escape(message)):
        load_coco(tmp_path / "train.json", folder)
    with pytest.warns(BadRecordWarning, match="skipped 1 malformed record"):
        kept = load_coco(tmp_path / "train.json", folder, skip_bad=True)
    np.testing.assert_array_equal(kept.records[0].boxes, [[1, 1, 9, 9]])  # the good box stays


def test_duplicate_image_ids_and_missing_files(tmp_path):
    folder = image_dir(tmp_path, "train")
    Image.fromarray(picture(64, 48)).save(folder / "a.png")
    write_coco_split(tmp_path, "train", [(3, "a.png", 64, 48, []), (3, "a.png", 64, 48, [])])
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'train.json'}: image id 3: duplicate image id")):
        load_coco(tmp_path / "train.json", folder)
    write_coco_split(tmp_path, "train", [(3, "a.png", 64, 48, []), (4, "gone.png", 64, 48, [])])
    message = f"{tmp_path / 'train.json'}: image id 4: image file {folder / 'gone.png'} not found"
    with pytest.raises(ValueError, match=re.escape(message)):
        load_coco(tmp_path / "train.json", folder)
    with pytest.warns(BadRecordWarning, match="skipped 1 malformed record"):
        assert [r.image_id for r in load_coco(tmp_path / "train.json", folder, skip_bad=True).records] == [3]


def test_images_without_boxes_stay_as_negatives_and_a_1x1_image_loads(tmp_path):
    folder = image_dir(tmp_path, "train")
    Image.fromarray(picture(64, 48)).save(folder / "empty.png")
    Image.fromarray(picture(1, 1)).save(folder / "dot.png")
    write_coco_split(tmp_path, "train", [(1, "empty.png", 64, 48, []), (2, "dot.png", 1, 1, [([0, 0, 1, 1], 2)])])
    records = check_images(load_coco(tmp_path / "train.json", folder), "train.json", skip_bad=False)
    dataset = DetectionDataset.from_record_set(records, DetectionTransform(train=True, min_size=64, max_size=None))
    assert len(dataset) == 2
    image, target = dataset[0]
    assert image.shape == (3, 64, 85) and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    image, target = dataset[1]
    assert image.shape == (3, 64, 64)
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 0.0, 64.0, 64.0]]))
    torch.testing.assert_close(target["labels"], torch.tensor([1]))


def many_boxes(count: int, size: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    wh = rng.integers(8, 41, (count, 2))
    xy = rng.integers(0, size - 40, (count, 2))
    categories = rng.integers(1, 3, count)
    return [([int(x), int(y), int(w), int(h)], int(c)) for (x, y), (w, h), c in zip(xy, wh, categories, strict=True)]


def test_an_image_with_5000_boxes_loads_them_all(tmp_path):
    folder = image_dir(tmp_path, "train")
    Image.fromarray(picture(256, 256)).save(folder / "crowded.png")
    objects = many_boxes(5000, 256)
    write_coco_split(tmp_path, "train", [(1, "crowded.png", 256, 256, objects)])
    dataset = DetectionDataset.from_record_set(load_coco(tmp_path / "train.json", folder))
    _, target = dataset[0]
    expected = np.array([[x, y, x + w, y + h] for (x, y, w, h), _ in objects], dtype=np.float32)
    np.testing.assert_array_equal(target["boxes"].numpy(), expected)
    np.testing.assert_array_equal(target["labels"].numpy(), [c - 1 for _, c in objects])


# --------------------------------------------------------------------------------------------------
# A training split too large for the pre-flight: a bad image is replaced by the next, every time


def test_a_large_training_split_replaces_a_bad_image_by_the_next_deterministically(tmp_path, monkeypatch):
    folder = image_dir(tmp_path, "train")
    names = ["a.png", "b.jpg", "c.png", "d.png"]
    for k, name in enumerate(names):
        Image.fromarray(picture(32, 32, seed=k)).save(folder / name)
    truncated_jpeg(folder / "b.jpg")
    records = [make_record(folder / n, 32, 32, k + 1, [(1, 1, 9, 9)], [0]) for k, n in enumerate(names)]
    record_set = RecordSet(records, ["cat"], [1])
    transforms = DetectionTransform(train=True, min_size=32, max_size=None)
    monkeypatch.setattr(dataset_module, "PREFLIGHT_MAX_IMAGES", 3)
    with pytest.raises(ValueError, match=re.escape(f"{folder / 'b.jpg'}: image id 2")):
        checked_dataset(record_set, transforms, source="t.json", train=False, skip_bad=False)
    dataset = checked_dataset(record_set, transforms, source="t.json", train=True, skip_bad=False)
    assert dataset.replace_bad and len(dataset) == 4

    view = SeededView(dataset, seed=7)
    with pytest.warns(BadRecordWarning, match=r"b\.jpg: image id 2: cannot decode.*\(1 bad image\(s\) met so far\)"):
        image, target = view[(0, 1)]
    assert target["image_id"] == 3 and list(dataset.replaced) == [1]
    # the same replacement, the same augmentation, in this process and in a fresh one (a resumed run)
    fresh = SeededView(checked_dataset(record_set, transforms, source="t.json", train=True, skip_bad=False), seed=7)
    with pytest.warns(BadRecordWarning):
        again = fresh[(0, 1)]
    for other in (view[(0, 1)], again):
        assert torch.equal(other[0], image) and other[1]["image_id"] == 3
        torch.testing.assert_close(other[1]["boxes"], target["boxes"])

    for name in names:
        truncated_jpeg(folder / name)
    broken = DetectionDataset.from_record_set(record_set, transforms, replace_bad=True)
    with pytest.warns(BadRecordWarning), pytest.raises(ValueError, match="none of the 4 images can be read"):
        broken[0]


# --------------------------------------------------------------------------------------------------
# Through `balancedet train`: one line and return code 2, or a warning with the count and a finished run


def train_argv(data: str, output: Path, *extra: str) -> list[str]:
    sets = [arg for key in [*TINY_RUN, "train.epochs=1"] for arg in ("--set", key)]
    return ["train", "--data", data, "--config", "retinanet_digits", *sets, "--output", str(output), *extra]


def write_val(root: Path) -> None:
    folder = image_dir(root, "val")
    Image.fromarray(picture(64, 48, seed=9)).save(folder / "v.png")
    write_coco_split(root, "val", [(100, "v.png", 64, 48, [([10, 10, 20, 20], 1)])])


def odd_but_valid_train_set(root: Path) -> list:
    """Images every reader trips on but that are legal: 16-bit, palette with transparency, RGBA, 1x1,
    EXIF-rotated, one without boxes."""
    folder = image_dir(root, "train")
    ramp = np.tile(np.arange(0, 65536, 1024, dtype=np.uint16), (48, 1))
    Image.fromarray(ramp).save(folder / "deep.png")
    Image.fromarray(picture(64, 48)).convert("P").save(folder / "palette.png", transparency=0)
    Image.fromarray(np.concatenate([picture(64, 48), picture(64, 48)[:, :, :1]], axis=2)).save(folder / "rgba.png")
    Image.fromarray(picture(1, 1)).save(folder / "dot.png")
    (folder / "turned.jpg").write_bytes(jpeg_bytes(picture(64, 48), exif=exif(6)))
    Image.fromarray(picture(64, 48, seed=4)).save(folder / "empty.png")
    box = ([8, 8, 24, 20], 1)
    return [
        (1, "deep.png", 64, 48, [box]),
        (2, "palette.png", 64, 48, [box]),
        (3, "rgba.png", 64, 48, [box]),
        (4, "dot.png", 1, 1, [([0, 0, 1, 1], 2)]),
        (5, "turned.jpg", 48, 64, [box]),
        (6, "empty.png", 64, 48, []),
    ]


def test_train_stops_before_training_with_one_line_naming_the_file_and_id(tmp_path, capsys):
    images = odd_but_valid_train_set(tmp_path)
    truncated_jpeg(image_dir(tmp_path, "train") / "truncated.jpg")
    write_coco_split(tmp_path, "train", [*images, (7, "truncated.jpg", 64, 48, [])])
    write_val(tmp_path)
    data = write_yaml(tmp_path)
    assert cli.main(train_argv(data, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"{tmp_path / 'images' / 'train' / 'truncated.jpg'}: image id 7: cannot decode the image" in err[0]
    assert not (tmp_path / "run" / "weights" / "last.pt").exists()

    # a json size that disagrees with its file, in the validation split: also before training
    write_coco_split(tmp_path, "train", images)
    write_coco_split(tmp_path, "val", [(100, "v.png", 64, 40, [])])
    assert cli.main(train_argv(data, tmp_path / "run2")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"balancedet train: error: {tmp_path / 'images' / 'val' / 'v.png'}: image id 100: the image is 64x48 "
        "but its annotation says 64x40"
    ]
    # an annotation defect in the json
    write_coco_split(tmp_path, "val", [(100, "v.png", 64, 48, [([1, 1, 5, 5], 9)])])
    assert cli.main(train_argv(data, tmp_path / "run3")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'val.json'}: annotation id 1 (image id 100): unknown category id 9" in err[0]


def test_skip_bad_trains_on_the_rest_with_warnings_and_counts(tmp_path):
    images = odd_but_valid_train_set(tmp_path)
    folder = image_dir(tmp_path, "train")
    truncated_jpeg(folder / "truncated.jpg")
    corrupt_png(folder / "corrupt.png")
    bad_boxes = [([5, 5, -4, 10], 1), ([5, 5, 4, 4], 9), ([4, 4, 10, 10], 2)]
    unreadable = [(7, "truncated.jpg", 64, 48, []), (8, "corrupt.png", 64, 48, [])]
    write_coco_split(tmp_path, "train", [*images, *unreadable, (9, "palette.png", 64, 48, bad_boxes)])
    write_val(tmp_path)
    with pytest.warns(BadRecordWarning) as seen:
        code = cli.main(train_argv(write_yaml(tmp_path), tmp_path / "run", "--skip-bad"))
    assert code == 0
    messages = [str(w.message) for w in seen if issubclass(w.category, BadRecordWarning)]
    prefix = f"{tmp_path / 'train.json'}: skipped 2 malformed record(s): "
    # one warning for the json's records, one for the images found by the pre-flight
    boxes = [m for m in messages if m.startswith(prefix) and "annotation id" in m]
    pixels = [m for m in messages if m.startswith(prefix) and "cannot decode" in m]
    assert len(boxes) == 1 and "has negative width" in boxes[0] and "unknown category id 9" in boxes[0]
    assert len(pixels) == 1 and "truncated.jpg: image id 7" in pixels[0] and "corrupt.png: image id 8" in pixels[0]
    assert (tmp_path / "run" / "weights" / "last.pt").is_file()
    assert (tmp_path / "run" / "metrics.json").is_file()


def large_split_with_a_truncated_jpeg(tmp_path: Path, monkeypatch) -> None:
    """A training split of 5 images, image id 7 a truncated JPEG, above a pre-flight limit lowered to 4."""
    images = odd_but_valid_train_set(tmp_path)
    truncated_jpeg(image_dir(tmp_path, "train") / "truncated.jpg")
    write_coco_split(tmp_path, "train", [*images, (7, "truncated.jpg", 64, 48, [([2, 2, 9, 9], 1)])])
    write_val(tmp_path)
    monkeypatch.setattr(dataset_module, "PREFLIGHT_MAX_IMAGES", 4)


def test_a_large_training_split_is_not_checked_first_and_trains_past_a_bad_image(tmp_path, monkeypatch):
    large_split_with_a_truncated_jpeg(tmp_path, monkeypatch)
    # a split too large to keep decoded (data.cache=false here): with the cache every image is decoded first
    argv = train_argv(write_yaml(tmp_path), tmp_path / "run", "--set", "data.cache=false")
    with pytest.warns(BadRecordWarning, match=r"truncated\.jpg: image id 7: .*1 bad image\(s\) met so far"):
        assert cli.main(argv) == 0
    assert (tmp_path / "run" / "weights" / "last.pt").is_file()


def test_a_large_training_split_kept_decoded_is_checked_first(tmp_path, monkeypatch, capsys):
    """With data.cache the whole split is decoded before training, whatever its size: the bad image is an
    error naming its file and id before the first step, or with skip_bad dropped with a count."""
    large_split_with_a_truncated_jpeg(tmp_path, monkeypatch)
    argv = train_argv(write_yaml(tmp_path), tmp_path / "run", "--set", "data.cache=true")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"{image_dir(tmp_path, 'train') / 'truncated.jpg'}: image id 7: cannot decode the image" in err[0]
    assert not (tmp_path / "run" / "weights" / "last.pt").exists()
    with pytest.warns(BadRecordWarning, match=r"1 .*skipped|skipped.*1"):
        assert cli.main([*argv, "--set", "data.skip_bad=true", "--output", str(tmp_path / "run2")]) == 0
    assert (tmp_path / "run2" / "weights" / "last.pt").is_file()


def test_an_image_with_5000_boxes_trains_a_step(tmp_path):
    folder = image_dir(tmp_path, "train")
    Image.fromarray(picture(256, 256)).save(folder / "crowded.png")
    Image.fromarray(picture(64, 48)).save(folder / "plain.png")
    write_coco_split(
        tmp_path, "train", [(1, "crowded.png", 256, 256, many_boxes(5000, 256)), (2, "plain.png", 64, 48, [])]
    )
    write_val(tmp_path)
    argv = train_argv(write_yaml(tmp_path), tmp_path / "run", "--set", "data.min_size=256")
    assert cli.main(argv) == 0
    with open(tmp_path / "run" / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(value) for key, value in rows[0].items() if "loss" in key]
    assert len(rows) == 1 and losses and all(np.isfinite(losses))
