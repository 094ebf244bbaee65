"""Reading an image file for the detector: ``read_image`` -> ``(3, H, W)`` uint8 RGB, as displayed.

Decoding is strict: a file that is missing, empty, not an image, truncated or corrupt raises
``BadImageError`` (a ``ValueError``) naming the file and the image id, never a Pillow traceback
in the middle of an epoch. The PNG chunks' CRCs are checked (``Image.verify``) before the pixels
are decoded: a flipped byte in compressed PNG data often still inflates, into wrong pixels, and
only the CRC catches it; JPEG has no checksum, so of its damage only truncation is caught. Pillow's
``ImageFile.LOAD_TRUNCATED_IMAGES``, which decodes a truncated file into a partly grey picture
without a word, is off during the decode even where another library turned it on.

Modes (what every format decodes to, see ``docs/conventions.md``):

- ``RGB``; ``L`` and ``1`` (0 / 255) repeated on the three channels; ``P`` through its palette;
  ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` by Pillow's conversion.
- Transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``P``, ``L`` or ``RGB`` with a transparent colour)
  is composited over ``BACKGROUND``, the ImageNet mean colour: a transparent pixel becomes what
  padding is, 0 after normalisation, instead of the arbitrary colour stored under alpha 0.
- 16- and 32-bit grayscale (``I;16``, ``I;16B``, ``I``) is scaled by the value range of the file's
  sample type, ``v -> round((v - low) * 255 / (high - low))`` (unsigned 16-bit:
  ``round(v * 255 / 65535)``), not clipped at 255 as ``Image.convert`` does (which turns a mid-grey
  16-bit picture white). Float images (``F``) must lie in ``[0, 1]`` and become ``round(v * 255)``;
  others are an error. 16-bit colour files are reduced to 8 bits by Pillow itself (the high byte).

EXIF orientation is applied: the image is returned as a viewer displays it, which is what
annotation tools (CVAT, Label Studio, labelme) show the annotator and what detectron2's
``read_image``, ultralytics and OpenCV's ``IMREAD_COLOR`` load (COCO's tools and torchvision's
``read_image`` ignore it). Sizes compare as displayed too: ``image_size`` (the loaders' header
read) swaps width and height for orientations 5-8, and a size that only matches the stored,
unrotated pixels is an error that says so.
"""

from __future__ import annotations

import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile
from torch import Tensor

__all__ = ["BACKGROUND", "BadImageError", "image_size", "read_image"]

BACKGROUND = (124, 116, 104)
"""Colour transparent pixels are composited over: the ImageNet mean ``(0.485, 0.456, 0.406) * 255``."""

ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that displays the stored pixels (EXIF 2.32, tag 274).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Pillow reports corrupt data with any of these, depending on the format and where the damage is.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)
_STRICT = threading.Lock()


class BadImageError(ValueError):
    """An image file that cannot be decoded, or whose size disagrees with its annotation."""


def image_size(path: Path | str) -> tuple[int, int]:
    """``(width, height)`` as displayed (EXIF orientation applied), from the header without decoding.

    Raises ``OSError`` (``PIL.UnidentifiedImageError``) for a file that is not an image.
    """
    with Image.open(path) as image:
        width, height = image.size
        # A PNG's EXIF chunk may follow the pixels, and Pillow decodes them to look for it; one ahead
        # of the pixels is read with the header. read_image sees both and checks the size again.
        if image.format == "PNG" and "exif" not in image.info:
            return width, height
        return (height, width) if _orientation(image) in (5, 6, 7, 8) else (width, height)


def read_image(path: Path | str, image_id: int | None = None, size: tuple[int, int] | None = None) -> Tensor:
    """Decode an image file into ``(3, H, W)`` uint8 RGB as displayed (see the module docstring).

    Args:
        path: the image file.
        image_id: the record's id, for the error messages.
        size: ``(width, height)`` the annotation gives; a displayed size that differs is an error.

    Raises:
        BadImageError: the file is missing, empty, not an image, truncated or corrupt, has a mode or
            value range without an 8-bit RGB meaning, or is not ``size``; the message names the file
            and the id.
    """
    where = f"{path}: image id {image_id}" if image_id is not None else f"{path}"
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            raw_mode = _raw_mode(image)
            _strict_load(image)
            orientation = _orientation(image)
            pixels = _to_rgb(image, raw_mode, where)
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(f"{where}: image file not found") from None
    except _DECODE_ERRORS as error:
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            raise BadImageError(f"{where}: the image file is empty (0 bytes)") from None
        raise BadImageError(f"{where}: cannot decode the image ({type(error).__name__}: {error})") from None
    stored = (pixels.shape[1], pixels.shape[0])
    if orientation in _TRANSPOSE:
        pixels = np.asarray(Image.fromarray(pixels).transpose(_TRANSPOSE[orientation]))
    if size is not None:
        _check_size(where, (pixels.shape[1], pixels.shape[0]), stored, orientation, size)
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


def _strict_load(image: Image.Image) -> None:
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        image.load()
        return
    # Someone turned the flag on for the whole process; it is off for this decode only. Only the
    # holders of the lock write the flag, so each puts back the value it found.
    with _STRICT:
        found = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            image.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = found


def _orientation(image: Image.Image) -> int:
    value = image.getexif().get(ORIENTATION_TAG, 1)
    return value if isinstance(value, int) else 1


def _check_size(
    where: str, shown: tuple[int, int], stored: tuple[int, int], orientation: int, size: tuple[int, int]
) -> None:
    if shown == tuple(size):
        return
    message = f"{where}: the image is {shown[0]}x{shown[1]} but its annotation says {size[0]}x{size[1]}"
    if stored != shown and stored == tuple(size):
        message += (
            f" (its EXIF orientation {orientation} turns the stored {stored[0]}x{stored[1]} pixels; images are "
            "read as displayed: annotate them as displayed, or strip the orientation tag)"
        )
    raise BadImageError(message)


def _raw_mode(image: Image.Image) -> str:
    """The layout of the file's samples (``I;16S``, ``I;32S``...), known until the pixels are loaded."""
    if not image.tile:
        return image.mode
    args = image.tile[0].args
    return args if isinstance(args, str) else str(args[0]) if args else image.mode


def _to_rgb(image: Image.Image, raw_mode: str, where: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 of a loaded image of any mode."""
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA")).astype(np.uint16)
        alpha = rgba[:, :, 3:]
        # round((c * a + b * (255 - a)) / 255) in integers (no ties: 255 is odd; at most 65,152 < 2**16)
        blended = rgba[:, :, :3] * alpha + np.asarray(BACKGROUND, dtype=np.uint16) * (255 - alpha)
        return ((blended + 127) // 255).astype(np.uint8)
    if mode == "RGB":
        return np.asarray(image)
    if mode.startswith("I") or mode == "F":
        gray = _scaled_gray(image, raw_mode, where)
        return np.repeat(gray[:, :, None], 3, axis=2)
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError as error:
        raise BadImageError(f"{where}: images of mode {mode} cannot be read as RGB ({error})") from None


def _scaled_gray(image: Image.Image, raw_mode: str, where: str) -> np.ndarray:
    """``(H, W)`` uint8 of a 16-bit, 32-bit or float grayscale image, by the range of its type."""
    values = np.asarray(image)
    if image.mode == "F":
        if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
            raise BadImageError(
                f"{where}: float image with values in [{np.nanmin(values):g}, {np.nanmax(values):g}] (or not "
                "finite): only [0, 1] has an 8-bit meaning; convert it to 8 or 16 bits"
            )
        return np.rint(values.astype(np.float64) * 255.0).astype(np.uint8)
    if image.mode.startswith("I;16"):
        low, high = 0, 65535
    elif "16" in raw_mode:
        # mode I holding 16-bit samples: the signed ones of a TIFF (I;16S, I;16BS), or the unsigned
        # ones of a 16-bit PNG, which Pillow before 10.3 opens as I
        low, high = (-32768, 32767) if raw_mode.endswith("S") else (0, 65535)
    else:
        low, high = -(2**31), 2**31 - 1
    span = high - low
    # (v - low) * 255 / span rounded, in integers: there are no ties, as span is odd
    return (((values.astype(np.int64) - low) * 255 + span // 2) // span).astype(np.uint8)
