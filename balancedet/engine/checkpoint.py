"""Checkpoints written atomically, and the random state that makes a resumed run exact.

A checkpoint holds everything a killed run needs to continue as if it had never stopped: the
model (with its loss modules' buffers: GHM histograms, the positive-count EMA), the optimiser, the
gradient scaler, the position in the schedule (epoch, batch within the epoch, global step), the
Python/NumPy/torch random states, the rows of ``results.csv`` so far and the best metric. It also
holds the configuration and the dataset's class names, so that ``eval`` and ``predict`` rebuild
the model from the file alone (``load_model``).
"""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from balancedet.engine.build import build_model


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: a kill mid-write
    leaves the previous checkpoint intact, never a truncated one.

    The temporary file is created with mode ``0o666`` and the kernel applies the umask (and the
    folder's default ACL), so the weights get the permissions of any other file the user writes,
    ``0o666 & ~umask``. ``tempfile.mkstemp`` would give ``0o600``, unreadable by the user's group;
    reading the umask to ``chmod`` afterwards needs ``os.umask`` to set it, a race with other threads.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new hidden file ``.<name>.<random>.tmp`` beside ``path``, opened for writing, mode
    ``0o666`` before the umask. ``O_EXCL`` makes it ours alone, as ``mkstemp`` does."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``balancedet train``; clear errors for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path}: no such file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise ValueError(f"checkpoint {path}: cannot be read ({type(error).__name__}: {error})") from error
    missing = [k for k in ("model", "config", "class_names") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path}: not a balancedet checkpoint (missing {', '.join(missing)})")
    return ckpt


def load_model(checkpoint_path: str | Path, device: str | torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """The checkpoint's detector, rebuilt from its configuration, on ``device`` in eval mode, and the
    checkpoint itself (``config``, ``class_names``, ``category_ids``...)."""
    ckpt = load_checkpoint(checkpoint_path)
    model = build_model(ckpt["config"]["model"], len(ckpt["class_names"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as error:
        raise ValueError(f"checkpoint {checkpoint_path}: weights do not fit its model configuration: {error}") from None
    return model.to(device).eval(), ckpt
