"""A NaN or infinite loss: the step is skipped and changes nothing, is counted, and ``train.max_bad_steps``
in a row stop the run with one clear line, ``last.pt`` kept; a resumed run counts on exactly.

The bad losses are injected from outside the loop: ``build_model`` is wrapped so that the real detector,
at the chosen steps (read from ``set_progress``, which the loop calls before every forward pass), gets
NaN images (every activation, BatchNorm statistic and loss NaN) or an infinite box-loss term.
"""

import copy
import csv
import math
import re

import pytest
import torch

from balancedet.cli import main as cli_main
from balancedet.engine import train as train_module
from balancedet.engine.callbacks import Callback
from balancedet.engine.checkpoint import load_checkpoint
from balancedet.engine.train import NonFiniteLossError, train
from tests.engine.conftest import TINY_RUN

SPE = 3  # steps an epoch: 24 training images, batch 8


def inject(monkeypatch, bad: set[int], kind: str, total: int = 2 * SPE) -> None:
    """From now on ``train`` builds detectors whose forward pass at the 0-based steps ``bad`` (of a run of
    ``total`` steps) is fed NaN images (``kind="nan_images"``) or returns an infinite ``loss_box``
    (``kind="inf_box"``)."""
    build = train_module.build_model

    def build_bad(model_config, num_classes):
        model = build(model_config, num_classes)
        step = {"now": 0}
        set_progress, forward = model.set_progress, model.forward

        def tracked_progress(progress):
            step["now"] = round(progress * total)
            set_progress(progress)

        def bad_forward(images, targets=None):
            if not model.training or step["now"] not in bad:
                return forward(images, targets)
            if kind == "nan_images":
                return forward(images * float("nan"), targets)
            losses = forward(images, targets)
            return {**losses, "loss_box": losses["loss_box"] * float("inf")}

        model.set_progress, model.forward = tracked_progress, bad_forward
        return model

    monkeypatch.setattr(train_module, "build_model", build_bad)


class Record(Callback):
    """Copies of everything a step may change (weights and buffers, optimiser and scaler state) after
    every step, and its learning rate."""

    def __init__(self):
        self.after: dict[int, dict] = {}

    def on_step_end(self, state):
        self.after[state.step] = {
            "model": copy.deepcopy(state.model.state_dict()),
            "optimizer": copy.deepcopy(state.optimizer.state_dict()),
            "scaler": copy.deepcopy(state.scaler.state_dict()),
            "lr": state.lr,
        }


class Undo(Record):
    """Trains step ``step`` as usual, then puts back the weights, buffers, optimiser and scaler of the
    step before: what skipping it should amount to, built without the loop's own skip."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            before = self.after[self.step - 1]
            state.model.load_state_dict(before["model"])
            state.optimizer.load_state_dict(before["optimizer"])
            state.scaler.load_state_dict(before["scaler"])
        super().on_step_end(state)


class KillAfter(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            raise KeyboardInterrupt  # what a Ctrl-C does; the default callbacks have already run


def tensors(obj):
    """Every tensor of a nested state dict, by path."""
    if torch.is_tensor(obj):
        return {"": obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else []
    return {f"{k}/{path}": t for k, v in items for path, t in tensors(v).items()}


def assert_same(a, b):
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


def results(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_nan_step_is_skipped_counted_and_changes_nothing(tiny_config, tmp_path, monkeypatch):
    # GHM-C's histogram and the positive-count EMA are buffers a NaN forward pass would spoil
    config = tiny_config("train.epochs=1", "model.cls_loss=ghmc", "model.normalizer_momentum=0.9")
    undone, skipped = Undo(step=2), Record()
    train(config, output=tmp_path / "undone", callbacks=[undone], verbose=False)
    inject(monkeypatch, bad={1}, kind="nan_images", total=SPE)  # the second step
    with pytest.warns(RuntimeWarning) as warned:
        result = train(config, output=tmp_path / "skipped", callbacks=[skipped], verbose=False)

    messages = [str(w.message) for w in warned if "NaN or infinite" in str(w.message)]
    assert messages == [
        "step 2: the loss is NaN or infinite (loss_cls=nan, loss_box=nan): the step is skipped, the weights are "
        "unchanged (1 in a row; training stops at train.max_bad_steps=10)"
    ]
    # nothing a checkpoint holds moved: weights, BatchNorm statistics, GHM histogram, EMA, optimiser, scaler
    for key in ("model", "optimizer", "scaler"):
        assert_same(skipped.after[2][key], skipped.after[1][key])
    # the third step trained on the third batch, at the third step's learning rate, as in the run that
    # trained the second step and undid it
    assert [skipped.after[s]["lr"] for s in (1, 2, 3)] == [undone.after[s]["lr"] for s in (1, 2, 3)]
    assert len({skipped.after[s]["lr"] for s in (1, 2, 3)}) == 3  # in the warm-up: each step's its own
    for key in ("model", "optimizer", "scaler"):
        assert_same(skipped.after[3][key], undone.after[3][key])
    assert not all(torch.equal(skipped.after[3]["model"][k], v) for k, v in skipped.after[2]["model"].items())

    assert result["skipped_steps"] == 1
    [row] = results(result["output"] / "results.csv")
    assert (row["epoch"], row["skipped_steps"]) == ("1", "1")
    assert math.isfinite(float(row["loss_cls"]))  # the mean of the two steps that trained
    last = load_checkpoint(result["output"] / "weights" / "last.pt")
    assert (last["step"], last["skipped_total"], last["bad_streak"]) == (SPE, 1, 0)


def test_max_bad_steps_in_a_row_stop_with_one_line_last_pt_kept_and_a_resume_counts_on(
    tiny_config, tiny_data, tmp_path, monkeypatch, capsys
):
    # steps 3, 4 and 5 (1-based) have an infinite box loss: the third in a row stops the run
    inject(monkeypatch, bad={2, 3, 4}, kind="inf_box")
    sets = ["train.epochs=2", "train.checkpoint_interval=1", "train.max_bad_steps=3"]
    argv = ["train", "--config", "retinanet_digits", "--data", tiny_data, "--output", str(tmp_path / "run")]
    with pytest.warns(RuntimeWarning, match=r"step [34]: the loss is NaN or infinite .*loss_box=inf"):
        code = cli_main([*argv, *[f"--set={s}" for s in [*TINY_RUN, *sets]]])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = tmp_path / "run" / "weights" / "last.pt"
    expected = (
        r"step 5: the loss was NaN or infinite in 3 steps in a row \(train.max_bad_steps; last: "
        rf"loss_cls=[0-9.e+-]+, loss_box=inf\); training stopped, {re.escape(str(last))} keeps the last checkpoint "
        r"before them: lower train.lr or set train.grad_clip"
    )
    assert re.fullmatch("balancedet train: error: " + expected, err.splitlines()[-1]), err.splitlines()[-1]
    kept = load_checkpoint(last)
    assert (kept["step"], kept["bad_streak"], kept["skipped_total"]) == (4, 2, 2)  # the failing step 5 not saved
    config = tiny_config(*sets)
    assert kept["config"] == config

    # killed after step 4, two bad steps in a row: the resumed run stops at the next, as the run above did
    with pytest.warns(RuntimeWarning), pytest.raises(KeyboardInterrupt):
        train(config, output=tmp_path / "killed", callbacks=[KillAfter(4)], verbose=False)
    killed = tmp_path / "killed" / "weights" / "last.pt"
    ckpt = load_checkpoint(killed)
    assert (ckpt["step"], ckpt["bad_streak"], ckpt["skipped"], ckpt["skipped_total"]) == (4, 2, 1, 2)
    with pytest.raises(NonFiniteLossError) as raised:
        train(None, resume=killed, verbose=False)
    # the same step, with the same loss terms: the resumed run computed what the uninterrupted one did
    uninterrupted = err.splitlines()[-1].removeprefix("balancedet train: error: ")
    assert str(raised.value).split("; training")[0] == uninterrupted.split("; training")[0]
    assert load_checkpoint(killed)["step"] == 4


def test_max_bad_steps_must_be_a_positive_count(capsys):
    assert cli_main(["train", "--set", "train.max_bad_steps=0"]) == 2
    assert "train.max_bad_steps=0: expected a positive number of steps in a row" in capsys.readouterr().err
