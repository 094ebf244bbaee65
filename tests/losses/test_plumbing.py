"""The shared conventions: reduction helper, value-check policy, compile fallback."""

import pytest
import torch

from balancedet.losses import backend, checks
from balancedet.losses.reduce import expand_weight, weight_reduce_loss


def test_weight_reduce_loss():
    loss = torch.arange(6.0).view(3, 2)
    w = torch.tensor([1.0, 0.0, 2.0])
    assert weight_reduce_loss(loss, w, "sum").item() == 0 + 1 + 2 * (4 + 5)
    assert weight_reduce_loss(loss, w, "mean").item() == pytest.approx(19 / 6)
    assert weight_reduce_loss(loss, w, "mean", avg_factor=2.0).item() == pytest.approx(9.5)
    assert weight_reduce_loss(loss, w, "none").tolist() == [[0, 1], [0, 0], [8, 10]]
    assert weight_reduce_loss(torch.zeros(0, 2), None, "mean").item() == 0.0
    with pytest.raises(ValueError, match="avg_factor"):
        weight_reduce_loss(loss, None, "none", avg_factor=2.0)
    with pytest.raises(ValueError, match="avg_factor"):
        weight_reduce_loss(loss, None, "mean", avg_factor=0.0)
    with pytest.raises(ValueError, match=r"weight.*\(3, 2\).*\(2,\)"):
        expand_weight(torch.ones(2), torch.Size((3, 2)))


def test_value_check_policy():
    labels = torch.tensor([0, 5])
    with pytest.raises(ValueError, match="labels"):
        checks.check_labels("labels", labels, 2, 0, 3)
    checks.set_value_checks("never")
    try:
        checks.check_labels("labels", labels, 2, 0, 3)  # skipped by policy
        with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
            checks.check_labels("labels", labels, 3, 0, 3)  # shape checks always run
    finally:
        checks.set_value_checks("auto")
    with pytest.raises(ValueError, match="policy"):
        checks.set_value_checks("sometimes")


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    calls = []

    def kernel(x):
        calls.append(1)
        return x * 2

    fused = backend.FusedKernel(kernel)

    def broken_compile(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("no compiler here")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(backend, "can_compile", lambda device_type: True)
    monkeypatch.setattr(backend, "_mode", "auto")
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        assert fused(torch.ones(2)).tolist() == [2.0, 2.0]
    assert fused(torch.ones(2)).tolist() == [2.0, 2.0]  # second call: eager, no new warning
    assert len(calls) == 2
    monkeypatch.setattr(backend, "_mode", "always")
    fused_always = backend.FusedKernel(kernel)
    with pytest.raises(RuntimeError, match="no compiler here"):
        fused_always(torch.ones(2))


def test_set_compile_rejects_unknown_mode():
    with pytest.raises(ValueError, match="compile mode"):
        backend.set_compile("sometimes")


def test_inductor_cache_is_keyed_by_cpu_capability(tmp_path):
    """Kernels compiled under ATEN_CPU_CAPABILITY=avx2 crashed a default-capability process that
    loaded them from the shared cache: each capability gets its own folder (balancedet.losses.backend)."""
    import os
    import subprocess
    import sys

    code = "import os, balancedet.losses.backend; print(os.environ['TORCHINDUCTOR_CACHE_DIR'])"
    folders = {}
    for capability in ("avx2", "default"):
        env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "ATEN_CPU_CAPABILITY")}
        if capability != "default":
            env["ATEN_CPU_CAPABILITY"] = capability
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        folders[capability] = out.stdout.strip()
    assert folders["avx2"].endswith("cpu-avx2")
    assert folders["avx2"] != folders["default"]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path)  # the user's choice wins

    # Inductor sets its default in the environment when first asked (here before balancedet is
    # imported, as the command line's imports did): that default is not a choice of the user's.
    first = "from torch._inductor.runtime.cache_dir_utils import cache_dir; cache_dir(); " + code
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "ATEN_CPU_CAPABILITY")}
    env["ATEN_CPU_CAPABILITY"] = "avx2"
    out = subprocess.run([sys.executable, "-c", first], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == folders["avx2"]


def test_a_compiled_kernel_that_disagrees_with_eager_falls_back_with_a_warning(monkeypatch):
    kernel = backend.FusedKernel(lambda x: (x * 2, x.sum()))
    monkeypatch.setattr(backend, "can_compile", lambda device_type: True)
    monkeypatch.setattr(backend, "_mode", "auto")
    kernel._compiled = lambda x: (x * 2 + 1, x.sum())  # what a stale cache entry gave: finite and wrong
    x = torch.arange(4.0)
    with pytest.warns(RuntimeWarning, match="disagrees with the eager one"):
        doubled, total = kernel(x)
    assert torch.equal(doubled, x * 2) and float(total) == 6.0
    assert kernel._broken  # eager from then on
    assert torch.equal(kernel(x)[0], x * 2)


def test_agreement_allows_float_reassociation_only():
    a = torch.tensor([1.0, 2.0, 3.0])
    assert backend.agrees(a + 1e-6, a)
    assert not backend.agrees(a * 1.01, a)
    assert not backend.agrees(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]))
    assert not backend.agrees((a, a), (a,))
