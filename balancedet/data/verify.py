"""The pre-flight: every image of a split decoded before training starts, not at step 20,000.

``check_images`` decodes each record's image exactly as training will (``read_image``, the size
check against the record included) on a few threads (Pillow's decoders release the GIL). A bad
image raises ``ValueError`` naming the file and the image id; with ``skip_bad`` it is dropped and
one ``BadRecordWarning`` gives the count. Which splits are checked, and what a training split too
large to check does instead, is ``balancedet.data.dataset.checked_dataset``.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from torch import Tensor

from balancedet.data.images import BadImageError, read_image
from balancedet.data.records import ImageRecord, RecordErrors, RecordSet

__all__ = ["PREFLIGHT_MAX_IMAGES", "check_images", "decode_images"]

PREFLIGHT_MAX_IMAGES = 2000
"""Largest training split decoded in full before training. A 640x480 image took 6 ms (JPEG) to 20-30 ms
(PNG of noisy content) to read on one core of a 2-core AMD EPYC, so 2,000 images take 12-40 s, a few
percent of even a short run on them; COCO's 118k would take 12-40 minutes, so a larger split is checked
as it trains (``DetectionDataset(replace_bad=True)``)."""

MAX_THREADS = 8


def image_problem(record: ImageRecord) -> str | None:
    """Why ``record``'s image cannot be trained on (the ``read_image`` message), or ``None``."""
    try:
        read_image(record.file, record.image_id, size=(record.width, record.height))
    except BadImageError as error:
        return str(error)
    return None


def _decode(record: ImageRecord) -> tuple[Tensor | None, str | None]:
    try:
        return read_image(record.file, record.image_id, size=(record.width, record.height)), None
    except BadImageError as error:
        return None, str(error)


def check_images(record_set: RecordSet, source: Path | str, *, skip_bad: bool, threads: int | None = None) -> RecordSet:
    """Decode every image of ``record_set``; raise at the first bad one in record order, or drop them.

    Args:
        record_set: the split's records.
        source: the split's annotations, named by the summary warning.
        skip_bad: drop bad images with one ``BadRecordWarning`` (their messages are appended to
            ``RecordSet.skipped``) instead of raising ``ValueError``.
        threads: decoding threads (default: the CPU count, at most ``MAX_THREADS``).

    Returns:
        ``record_set`` itself when every image decodes, else a copy without the bad records.
    """
    return _check(record_set, source, skip_bad, threads, keep=False)[0]


def decode_images(
    record_set: RecordSet, source: Path | str, *, skip_bad: bool, threads: int | None = None
) -> tuple[RecordSet, list[Tensor]]:
    """``check_images`` that keeps what it decoded: the records (bad ones dropped, or the error raised,
    exactly as ``check_images``) and each kept record's ``(3, H, W)`` uint8 image, in record order."""
    return _check(record_set, source, skip_bad, threads, keep=True)


def _check(
    record_set: RecordSet, source: Path | str, skip_bad: bool, threads: int | None, keep: bool
) -> tuple[RecordSet, list[Tensor]]:
    errors = RecordErrors(Path(source), skip_bad)
    workers = threads or min(MAX_THREADS, os.cpu_count() or 1)
    bad: set[int] = set()
    pixels: list[Tensor] = []
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        # without keep the threads return the message only: finished results not yet consumed would
        # otherwise hold decoded images
        for index, result in enumerate(pool.map(_decode if keep else image_problem, record_set.records)):
            image, problem = result if keep else (None, result)
            if problem is not None:
                errors(problem)
                bad.add(index)
            elif keep:
                pixels.append(image)
    finally:
        pool.shutdown(cancel_futures=True)
    messages = errors.summarise()
    if not bad:
        return record_set, pixels
    kept = [record for index, record in enumerate(record_set.records) if index not in bad]
    return dataclasses.replace(record_set, records=kept, skipped=tuple(record_set.skipped) + messages), pixels
