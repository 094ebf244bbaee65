"""Where the fused loss kernels run: ``torch.compile`` (Inductor) or plain eager PyTorch.

The fused losses are written once as plain tensor code. When the policy allows and the
device can compile (a C++ compiler and Python headers for CPU, Triton for CUDA), the code
is compiled with ``torch.compile(dynamic=True)``, which fuses the element-wise work into
one pass; otherwise, or if compilation fails, the same function runs eagerly.

Policy: ``set_compile("auto" | "always" | "never")`` or the environment variable
``BALANCEDET_COMPILE``. ``"auto"`` (default) compiles where it can and falls back to eager
with one warning if compilation fails; ``"always"`` lets a compilation error propagate.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import sysconfig
import warnings
from collections.abc import Callable
from typing import Any

import torch

_MODES = ("auto", "always", "never")


def isolate_inductor_cache() -> str | None:
    """Give Inductor's on-disk cache one folder per CPU capability, unless the user chose a folder.

    The cache key ignores ``ATEN_CPU_CAPABILITY``: kernels compiled in a process started with
    ``ATEN_CPU_CAPABILITY=avx2`` (the way to approximate an AVX2-only host on an AVX-512 one) and then
    loaded by a process with the default capability crashed the GFL training step (segfault or
    ``malloc_consolidate(): invalid chunk size``, torch 2.14.1 on an AVX-512 AMD EPYC); with one folder
    per capability each process only reads kernels compiled under its own. Returns the folder, or None
    when ``TORCHINDUCTOR_CACHE_DIR`` was set by the user.
    """
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return None
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    capability = torch.backends.cpu.get_cpu_capability().lower()
    folder = os.path.join(default_cache_dir(), f"cpu-{capability}")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    return folder


isolate_inductor_cache()
_mode = os.environ.get("BALANCEDET_COMPILE", "auto")
if _mode not in _MODES:
    raise ValueError(f"BALANCEDET_COMPILE must be one of {_MODES}, got {_mode!r}")


def set_compile(mode: str) -> None:
    """Choose the kernel backend: ``"auto"``, ``"always"`` or ``"never"``."""
    global _mode
    if mode not in _MODES:
        raise ValueError(f"compile mode must be one of {_MODES}, got {mode!r}")
    _mode = mode


def get_compile() -> str:
    return _mode


@functools.cache
def can_compile(device_type: str) -> bool:
    """Whether ``torch.compile`` has a working backend for ``device_type`` on this machine."""
    if not hasattr(torch, "compile"):
        return False
    if device_type == "cpu":
        has_cxx = any(shutil.which(c) for c in ("c++", "g++", "clang++"))
        include = sysconfig.get_paths().get("include", "")
        return has_cxx and os.path.exists(os.path.join(include, "Python.h"))
    if device_type == "cuda":
        try:
            from torch.utils._triton import has_triton

            return has_triton()
        except ImportError:
            return False
    return False


@contextlib.contextmanager
def _quiet_cpp_extension():
    """Silence torch's "No CUDA runtime is found" notice, printed when a CUDA build compiles CPU code."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class FusedKernel:
    """A tensor function that runs compiled when the policy and the device allow it."""

    def __init__(self, fn: Callable[..., Any]):
        self.eager = fn
        self._compiled: Callable[..., Any] | None = None
        self._broken = False
        functools.update_wrapper(self, fn)

    def _use_compiled(self, device_type: str) -> bool:
        if _mode == "never" or self._broken or torch.compiler.is_compiling():
            return False
        if _mode == "always":
            return True
        return can_compile(device_type)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        device_type = next(a.device.type for a in args if isinstance(a, torch.Tensor))
        if not self._use_compiled(device_type):
            return self.eager(*args, **kwargs)
        if self._compiled is None:
            self._compiled = torch.compile(self.eager, dynamic=True, fullgraph=True)
        if _mode == "always":
            with _quiet_cpp_extension():
                return self._compiled(*args, **kwargs)
        try:
            with _quiet_cpp_extension():
                return self._compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back to the same math
            self._broken = True
            warnings.warn(
                f"balancedet: torch.compile failed for {self.eager.__name__} ({type(err).__name__}: {err}); "
                "using the eager implementation",
                RuntimeWarning,
                stacklevel=2,
            )
            return self.eager(*args, **kwargs)


def fused_kernel(fn: Callable[..., Any]) -> FusedKernel:
    """Decorator: mark ``fn`` as a kernel that may be compiled (see module docstring)."""
    return FusedKernel(fn)
