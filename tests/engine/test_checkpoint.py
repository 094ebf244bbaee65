"""``load_model``: a saved detector comes back with the same outputs; foreign, corrupt files and files
carrying code fail clearly (the code never runs). ``save_atomic``: the file gets the permissions the umask
gives any other file. The random states are plain data. An output folder that cannot be written, is on a
full disk or lacks room for the checkpoints is named before training starts."""

import errno
import os
import random
import re
import shutil
from collections import namedtuple

import numpy as np
import pytest
import torch

from balancedet.cli import main as cli_main
from balancedet.engine import checkpoint
from balancedet.engine.build import build_model
from balancedet.engine.checkpoint import (
    check_writable,
    checkpoint_room,
    load_checkpoint,
    load_model,
    rng_state,
    save_atomic,
    set_rng_state,
)
from balancedet.engine.train import train


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


class RunsCode:
    """Unpickled, it calls ``exec``: what a tampered checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path):
    marker, path = tmp_path / "marker", tmp_path / "weights" / "last.pt"
    save_atomic({"model": {}, "config": {}, "class_names": [], "extra": RunsCode(marker)}, path)
    with pytest.raises(
        ValueError, match=r"last.pt: refused: its pickle imports (builtins\.)?exec, .* nothing in it was run"
    ):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="refused"):
        load_model(path, "cpu")
    assert not marker.exists()
    # the payload is live: an unrestricted unpickler runs it
    torch.load(path, weights_only=False)
    assert marker.read_text() == "ran"


def test_a_truncated_or_foreign_file_is_named(tmp_path):
    whole = tmp_path / "whole.pt"
    save_atomic({"model": {"w": torch.ones(1000)}, "config": {}, "class_names": []}, whole)
    truncated, foreign = tmp_path / "truncated.pt", tmp_path / "notes.pt"
    truncated.write_bytes(whole.read_bytes()[:1500])
    foreign.write_bytes(b"\x80\x02not a checkpoint at all")
    assert load_checkpoint(whole)["model"]["w"].sum() == 1000
    with pytest.raises(ValueError, match=r"truncated.pt: cannot be read"):
        load_checkpoint(truncated)
    with pytest.raises(ValueError, match=r"notes.pt: cannot be read"):
        load_checkpoint(foreign)


def test_the_random_states_round_trip_through_a_data_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal(size=3)  # odd: NumPy's legacy generator caches the second Gaussian of a pair
    state = rng_state()
    expected = (random.random(), np.random.normal(size=3), np.random.randint(0, 2**31, size=5), torch.rand(4))
    path = tmp_path / "rng.pt"
    save_atomic({"rng": state}, path)
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(torch.load(path, weights_only=True)["rng"])
    assert random.random() == expected[0]
    assert np.array_equal(np.random.normal(size=3), expected[1])
    assert np.array_equal(np.random.randint(0, 2**31, size=5), expected[2])
    assert torch.equal(torch.rand(4), expected[3])


def test_an_output_under_a_regular_file_is_named_before_the_data_is_read(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    output = tmp_path / "file" / "run"
    expected = f"output folder {output / 'weights'}: cannot write there: {os.strerror(errno.ENOTDIR)}"
    with pytest.raises(ValueError) as raised:
        check_writable(output / "weights")
    assert str(raised.value) == expected
    # the dataset does not exist either: the error is the output's, so it came first
    missing = tmp_path / "no_such_data.yaml"
    assert cli_main(["train", "--data", str(missing), "--config", "retinanet_digits", "--output", str(output)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"balancedet train: error: {expected}"


def test_a_full_disk_is_named_before_the_data_is_read(tiny_config, tmp_path, monkeypatch):
    def on_dev_full(path):
        """The probe writes to /dev/full, where every write fails as on a full disk."""
        probe = path.parent / f".{path.name}.dev-full.tmp"
        probe.touch()
        return os.open("/dev/full", os.O_WRONLY), probe

    monkeypatch.setattr(checkpoint, "_create_temporary", on_dev_full)
    config = tiny_config()
    config["data"]["dataset"] = str(tmp_path / "no_such_data.yaml")  # not read: the output fails first
    with pytest.raises(ValueError) as raised:
        train(config, output=tmp_path / "run", verbose=False)
    assert str(raised.value) == (
        f"output folder {tmp_path / 'run' / 'weights'}: cannot write there: "
        f"{os.strerror(errno.ENOSPC)} (the disk is full)"
    )


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])  # two moments a parameter, and one
def test_too_little_room_for_the_checkpoints_is_named_before_training(tiny_config, tmp_path, monkeypatch, optimizer):
    config = tiny_config("train.epochs=1", f"train.optimizer={optimizer}")
    out = train(config, output=tmp_path / "run", verbose=False)["output"]
    last, best = (out / "weights" / name for name in ("last.pt", "best.pt"))
    model, _ = load_model(last, "cpu")
    # the peak the estimate is for: a new last.pt beside the old one, and best.pt; the files also hold the
    # configuration, the rows and the random states, a few kB
    peak = 2 * last.stat().st_size + best.stat().st_size
    need = checkpoint_room(model, optimizer)
    assert need == pytest.approx(peak, rel=0.01)

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * need, 9 * need, need - 1))
    folder = re.escape(str(tmp_path / "again" / "weights"))
    with pytest.raises(ValueError, match=rf"^output folder {folder}: [0-9.]+ MiB free, the checkpoints need [0-9.]+"):
        train(config, output=tmp_path / "again", verbose=False)
    assert not (tmp_path / "again" / "args.yaml").exists()  # nothing trained, nothing written
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * need, 9 * need, need))
    checkpoint.check_room(tmp_path, model, optimizer)  # exactly enough
    # a resumed run's folder already holds a last.pt and a best.pt: it needs one more last.pt
    more = need - last.stat().st_size - best.stat().st_size
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * need, 9 * need, more))
    checkpoint.check_room(out / "weights", model, optimizer)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * need, 9 * need, more - 1))
    with pytest.raises(ValueError, match="MiB free, the checkpoints need"):
        checkpoint.check_room(out / "weights", model, optimizer)
