"""Test defaults: eager kernels (compilation is exercised by the tests that ask for it)."""

import os

os.environ.setdefault("BALANCEDET_COMPILE", "never")

import pytest  # noqa: E402
import torch  # noqa: E402

from balancedet.losses import backend  # noqa: E402


@pytest.fixture
def compile_mode():
    """Run a test with ``torch.compile`` kernels forced on, restoring the policy afterwards."""
    if not backend.can_compile("cpu"):
        pytest.fail("this machine has no C++ compiler / Python headers for torch.compile on CPU")
    previous = backend.get_compile()
    backend.set_compile("always")
    yield
    backend.set_compile(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
