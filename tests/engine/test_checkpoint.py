"""``load_model``: a saved detector comes back with the same outputs; foreign files fail clearly.
``save_atomic``: the file gets the permissions the umask gives any other file."""

import os

import pytest
import torch

from balancedet.engine.build import build_model
from balancedet.engine.checkpoint import load_model, save_atomic


def test_load_model_round_trip_gives_identical_outputs(tiny_config, tmp_path):
    config = tiny_config("model.score_thresh=0.0")  # keep candidates: the comparison is not of empty lists
    model = build_model(config["model"], 3).eval()
    with torch.no_grad():  # weights unlike a fresh build's, so only loading them reproduces the outputs
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "weights" / "best.pt"
    save_atomic(
        {"model": model.state_dict(), "config": config, "class_names": ["a", "b", "c"], "category_ids": [1, 2, 3]},
        path,
    )
    loaded, ckpt = load_model(path, "cpu")
    assert not loaded.training
    assert ckpt["class_names"] == ["a", "b", "c"]
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected, actual = model(images), loaded(images)
    assert all(len(det["boxes"]) for det in expected)
    for want, got in zip(expected, actual, strict=True):
        assert want.keys() == got.keys()
        for key in want:
            assert torch.equal(want[key], got[key]), key


def test_load_model_names_the_file_of_a_foreign_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match=r"other.pt: not a balancedet checkpoint \(missing model, config"):
        load_model(path, "cpu")


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_save_atomic_gives_the_file_the_mode_of_any_file_under_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        save_atomic({"step": 1}, tmp_path / "weights" / "last.pt")
        save_atomic({"step": 2}, tmp_path / "weights" / "last.pt")  # replacing an existing file
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    path = tmp_path / "weights" / "last.pt"
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert torch.load(path)["step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left


def test_save_atomic_leaves_no_temporary_file_when_the_write_fails(tmp_path):
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises
        save_atomic({"bad": lambda: None}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []
