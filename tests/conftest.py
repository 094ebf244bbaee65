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


def digits_yaml(root, name: str, options: str) -> str:
    """``root/<name>.yaml``: the built-in digits scenes of ``options`` (a YAML mapping), cached under ``root``."""
    path = root / f"{name}.yaml"
    path.write_text(f"format: digits\npath: {root / 'cache'}\noptions: {options}\n")
    return str(path)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A dataset YAML: the built-in digits scenes, 24 train and 8 val images of 64 px, for short runs."""
    options = "{num_train: 24, num_val: 8, image_size: 64, objects: [1, 3], object_size: [14, 32]}"
    return digits_yaml(tmp_path_factory.mktemp("digits"), "tiny", options)
