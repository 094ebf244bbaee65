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
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    # Inductor writes its default into the environment the first time it looks (another import may
    # have done so before this one): only a folder other than that default is the user's choice.
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is not None and os.path.abspath(chosen) != os.path.abspath(default_cache_dir()):
        return None
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
    """A tensor function that runs compiled when the policy and the device allow it.

    The first compiled call of each process is checked against the eager function on the same inputs
    (``agrees``); on a mismatch the kernel warns and runs eagerly from then on. A stale Inductor cache
    entry once gave the digits GFL preset a DFL of 0.274 where the eager function gives 0.716 (loss
    weight 0.25 x log 17 at the uniform initial distribution): finite, wrong, and the run never
    learned. The check costs one eager call per kernel and process.
    """

    def __init__(self, fn: Callable[..., Any]):
        self.eager = fn
        self._compiled: Callable[..., Any] | None = None
        self._broken = False
        self._checked = False
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
                out = self._compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back to the same math
            return self._fall_back(
                f"torch.compile failed for {self.eager.__name__} ({type(err).__name__}: {err})", args, kwargs
            )
        if not self._checked:
            self._checked = True
            expected = self.eager(*args, **kwargs)
            if not agrees(out, expected):
                return self._fall_back(
                    f"the compiled {self.eager.__name__} disagrees with the eager one (a stale Inductor cache? "
                    f"TORCHINDUCTOR_CACHE_DIR={os.environ.get('TORCHINDUCTOR_CACHE_DIR')})",
                    args,
                    kwargs,
                    expected,
                )
        return out

    def _fall_back(self, why: str, args: tuple, kwargs: dict, result: Any = None) -> Any:
        self._broken = True
        warnings.warn(f"balancedet: {why}; using the eager implementation", RuntimeWarning, stacklevel=3)
        return result if result is not None else self.eager(*args, **kwargs)


def agrees(out: Any, expected: Any, rtol: float = 1e-3) -> bool:
    """Whether two kernel results (tensors, or tuples of them) are equal up to float reassociation."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    exps = expected if isinstance(expected, (tuple, list)) else (expected,)
    if len(outs) != len(exps):
        return False
    for a, b in zip(outs, exps, strict=True):
        if not isinstance(a, torch.Tensor):
            if a != b:
                return False
            continue
        if a.shape != b.shape or not torch.equal(torch.isfinite(a), torch.isfinite(b)):
            return False
        a, b = a.detach().double(), b.detach().double()
        scale = b.abs().max().item() if b.numel() else 0.0
        if b.numel() and not torch.allclose(a, b, rtol=rtol, atol=rtol * scale + 1e-12, equal_nan=True):
            return False
    return True


def fused_kernel(fn: Callable[..., Any]) -> FusedKernel:
    """Decorator: mark ``fn`` as a kernel that may be compiled (see module docstring)."""
    return FusedKernel(fn)
