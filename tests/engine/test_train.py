"""The trainer end to end on tiny built-in splits: outputs, exact resume, eval and predict."""

import json

import pytest
import torch

from balancedet.cli import main as cli_main
from balancedet.data import load_data_spec
from balancedet.engine.callbacks import Callback
from balancedet.engine.checkpoint import load_checkpoint
from balancedet.engine.train import train


class Killed(Exception):
    """The simulated kill of a training process."""


class KillAfter(Callback):
    """Kill the run at the end of step ``step`` (after the default callbacks: a checkpoint due at
    that step is written, as it would be before a real kill)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            raise Killed(f"killed after step {state.step}")


def test_resume_after_a_kill_reproduces_the_uninterrupted_weights(tiny_config, tmp_path):
    config = tiny_config(
        "train.epochs=2",
        "train.checkpoint_interval=2",
        "train.milestones=[1]",
        "model.cls_loss=ghmc",
        "model.normalizer_momentum=0.9",
    )
    full = train(config, output=tmp_path / "full", verbose=False)
    with pytest.raises(Killed):
        train(config, output=tmp_path / "killed", callbacks=[KillAfter(5)], verbose=False)
    killed = load_checkpoint(tmp_path / "killed" / "weights" / "last.pt")
    assert killed["step"] == 4  # killed after step 5: the last checkpoint (every 2 steps) was at step 4
    resumed = train(None, resume=tmp_path / "killed" / "weights" / "last.pt", verbose=False)
    assert resumed["output"] == (tmp_path / "killed").resolve()
    a = load_checkpoint(full["output"] / "weights" / "last.pt")
    b = load_checkpoint(resumed["output"] / "weights" / "last.pt")
    assert a["step"] == b["step"] == 6
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert full["metrics"] == pytest.approx(resumed["metrics"], nan_ok=True)


def test_run_folder_holds_what_ultralytics_users_expect(tiny_data, tiny_config, tmp_path):
    config = tiny_config("train.epochs=1")
    out = train(config, output=tmp_path / "run", verbose=False)["output"]
    for name in (
        "args.yaml",
        "results.csv",
        "results.png",
        "PR_curve.png",
        "confusion_matrix.png",
        "val_batch0_labels.jpg",
        "val_batch0_pred.jpg",
        "metrics.json",
        "weights/best.pt",
        "weights/last.pt",
    ):
        assert (out / name).is_file(), name
    assert list(out.glob("events.out.tfevents.*"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values() if v is not None)
    second = train(config, output=tmp_path / "run", verbose=False)["output"]
    assert second == tmp_path / "run2"

    assert cli_main(["eval", "--checkpoint", str(out / "weights" / "last.pt"), "--output", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "PR_curve.png").is_file()
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert evaluated == pytest.approx(metrics, nan_ok=True)

    val_images = load_data_spec(tiny_data).split("val").images
    code = cli_main(
        [
            "predict",
            "--checkpoint",
            str(out / "weights" / "last.pt"),
            str(val_images),
            "--output",
            str(tmp_path / "pred"),
            "--score-thresh",
            "0",
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert {r["category_id"] for r in results} <= set(range(1, 11))
    assert len(list((tmp_path / "pred").glob("*_pred.jpg"))) == 8


def test_max_time_stops_early_and_still_evaluates_and_saves(tiny_config, tmp_path, capsys):
    # 0.001 s is spent before the first step (loading the data): every process stops after one step
    config = tiny_config("train.epochs=2", "train.max_time=0.001", "train.checkpoint_interval=100")
    result = train(config, output=tmp_path / "run", verbose=True)
    assert result["stopped"].startswith("train.max_time=0.001 s reached after step 1")
    assert "stopped early: train.max_time=0.001 s" in capsys.readouterr().out
    out = result["output"]
    for name in ("metrics.json", "weights/best.pt", "weights/last.pt", "results.csv", "PR_curve.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text())["AP"] == pytest.approx(result["metrics"]["AP"])
    last = load_checkpoint(out / "weights" / "last.pt")
    assert last["step"] == 1  # of 2 epochs x 3 steps
    assert [row["epoch"] for row in last["rows"]] == [0.333]

    # The budget is the process's: the resumed run gets 0.001 s again, so it also does one step.
    resumed = train(None, resume=out / "weights" / "last.pt", verbose=False)
    assert resumed["stopped"].startswith("train.max_time=0.001 s reached after step 2")
    last = load_checkpoint(out / "weights" / "last.pt")
    assert last["step"] == 2
    assert [row["epoch"] for row in last["rows"]] == [0.333, 0.667]
    assert (out / "results.csv").read_text().splitlines()[2].startswith("0.667,")


def test_bad_input_gives_one_clear_line(tmp_path, capsys):
    assert cli_main(["train", "--set", "train.epoch=1"]) == 2
    assert "unknown key train.epoch" in capsys.readouterr().err
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt: no such file" in capsys.readouterr().err
    assert cli_main(["train", "--data", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
