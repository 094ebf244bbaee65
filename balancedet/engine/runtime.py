"""Where a run executes and where it writes: the device, mixed precision, a fresh run folder.

Shared by ``train``, ``eval`` and ``predict`` (none of them imports another for these).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; a named CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r}: CUDA is not available on this machine")
    return device


def amp_dtype(setting: Any, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 autocast on GPUs that support it, fp16 on older GPUs, none on the CPU."""
    if setting in (False, None, "off", "none"):
        return None
    if setting == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if setting in ("bf16", "bfloat16"):
        return torch.bfloat16
    if setting in ("fp16", "float16"):
        return torch.float16
    raise ValueError(f"train.amp={setting!r}: expected auto, off, bf16 or fp16")


def increment_dir(path: Path) -> Path:
    """``path`` if unused, else ``path2``, ``path3``... (never overwrite an earlier run)."""
    if not path.exists():
        return path
    n = 2
    while path.with_name(f"{path.name}{n}").exists():
        n += 1
    return path.with_name(f"{path.name}{n}")


def cpu_name() -> str:
    """The CPU's model name as ``lscpu`` prints it (``/proc/cpuinfo``), or the platform's processor."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"
