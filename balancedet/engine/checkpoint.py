"""Checkpoints written atomically, and the random state that makes a resumed run exact.

A checkpoint holds everything a killed run needs to continue as if it had never stopped: the
model (with its loss modules' buffers: GHM histograms, the positive-count EMA), the optimiser, the
gradient scaler, the position in the schedule (epoch, batch within the epoch, global step), the
Python/NumPy/torch random states, the rows of ``results.csv`` so far and the best metric. It also
holds the configuration and the dataset's class names, so that ``eval`` and ``predict`` rebuild
the model from the file alone (``load_model``).

A checkpoint is data, not code: it holds only tensors and plain Python values (numbers, strings,
lists, tuples, dicts; the NumPy random state is stored as a tensor), and every load uses
``torch.load(weights_only=True)``, so a file whose pickle would import or call anything (a class, a
``__reduce__``) is refused before any of it runs. ``check_writable`` and ``check_room`` find an
output folder that cannot be written, or that lacks the room for the checkpoints, before training.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from balancedet.engine.build import build_model


def rng_state() -> dict[str, Any]:
    """The Python, NumPy and torch (and CUDA) random states, as tensors and plain values only: NumPy's
    own state holds an ``ndarray``, which ``torch.load(weights_only=True)`` refuses."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        # MT19937's 624 uint32 words, exact in int64 (torch's uint32 lacks most operations)
        "numpy": {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos)},
        "numpy_gauss": (int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """The inverse of ``rng_state``."""
    random.setstate(state["python"])
    numpy = state["numpy"]
    np.random.set_state((numpy["name"], numpy["key"].numpy().astype(np.uint32), numpy["pos"], *state["numpy_gauss"]))
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


def remove_temporaries(folder: Path) -> None:
    """Remove the temporary files ``.<name>.<random>.tmp`` in ``folder`` that a kill left behind in the
    middle of ``save_atomic`` (or of ``check_writable``'s probe)."""
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``balancedet train``, as data only (``weights_only=True``); clear
    errors for a missing, foreign or corrupt file, and for one whose pickle carries code."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path}: no such file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch names the global the restricted unpickler refused; its advice (weights_only=False) is
        # not repeated: that would run the code
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        if found is None:
            raise ValueError(f"checkpoint {path}: cannot be read (not a torch file, or a corrupt one)") from None
        raise ValueError(
            f"checkpoint {path}: refused: its pickle imports {found.group(1)}, and balancedet reads checkpoints "
            "as data only (tensors, numbers, strings, lists, dicts: torch.load with weights_only=True), so "
            "nothing in it was run; balancedet train writes no code into a checkpoint"
        ) from None
    except Exception as error:  # noqa: BLE001 - any other failure to read means "not a checkpoint"
        raise ValueError(f"checkpoint {path}: cannot be read ({type(error).__name__}: {error})") from error
    missing = [k for k in ("model", "config", "class_names") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path}: not a balancedet checkpoint (missing {', '.join(missing)})")
    return ckpt


def check_writable(folder: Path) -> None:
    """``ValueError`` naming ``folder`` (created if missing) unless a file can be written there.

    A probe file of one block is written, synced and removed: this finds a read-only file system, a
    missing permission, a path under a regular file and a full disk (``ENOSPC`` at the write or the
    sync) before the data is loaded, not at the first checkpoint."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = _create_temporary(folder / "write-probe")
        try:
            os.write(fd, bytes(4096))
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as error:
        full = " (the disk is full)" if error.errno == errno.ENOSPC else ""
        raise ValueError(f"output folder {folder}: cannot write there: {error.strerror or error}{full}") from None


def check_room(folder: Path, model: nn.Module, optimizer: str) -> None:
    """``ValueError`` naming ``folder`` if it has less free space than the run's checkpoints take at
    their peak (``checkpoint_room``), less what its ``last.pt`` and ``best.pt`` (a resumed run's) hold."""
    held = sum(f.stat().st_size for f in (folder / "last.pt", folder / "best.pt") if f.is_file())
    need, free = checkpoint_room(model, optimizer) - held, shutil.disk_usage(folder).free
    if free < need:
        raise ValueError(
            f"output folder {folder}: {free / 2**20:.1f} MiB free, the checkpoints need {need / 2**20:.1f} MiB "
            "more (weights/last.pt written beside the previous one, and best.pt)"
        )


def checkpoint_room(model: nn.Module, optimizer: str) -> int:
    """Bytes the run's checkpoints take at their peak: two ``last.pt`` (a new one is written beside the
    previous one, then replaces it), each the state dict plus the optimiser's state (SGD's momentum:
    one tensor per trained parameter, AdamW's moments: two), and ``best.pt`` (the state dict)."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    slots = {"sgd": 1, "adamw": 2}[optimizer]
    return 2 * (weights + slots * trained) + weights


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
