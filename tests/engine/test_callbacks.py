"""Which hooks fire, how often and in what order, over tiny runs of 3 steps an epoch."""

import pytest

from balancedet.engine.callbacks import Callback
from balancedet.engine.train import train


class Recorder(Callback):
    """Records ``(hook, step)`` and, at epoch ends, whether the weights were just evaluated;
    sets ``state.stop`` after step ``stop_at``, raises after step ``raise_at``."""

    def __init__(self, stop_at: int | None = None, raise_at: int | None = None):
        self.stop_at, self.raise_at = stop_at, raise_at
        self.events: list[tuple[str, int]] = []
        self.evaluated: list[bool] = []

    def on_train_start(self, state):
        self.events.append(("on_train_start", state.step))

    def on_step_end(self, state):
        self.events.append(("on_step_end", state.step))
        if state.step == self.stop_at:
            state.stop = "enough"
        if state.step == self.raise_at:
            raise RuntimeError("boom")

    def on_epoch_end(self, state):
        self.events.append(("on_epoch_end", state.step))
        self.evaluated.append(state.evaluated)

    def on_train_end(self, state):
        self.events.append(("on_train_end", state.step))

    def teardown(self, state):
        self.events.append(("teardown", state.step))


def test_hooks_of_a_full_run(tiny_config, tmp_path):
    recorder = Recorder()
    train(tiny_config("train.epochs=2", "train.eval_interval=2"), tmp_path / "run", callbacks=[recorder], verbose=False)
    steps = [("on_step_end", s) for s in (1, 2, 3)], [("on_step_end", s) for s in (4, 5, 6)]
    assert recorder.events == [
        ("on_train_start", 0),
        *steps[0],
        ("on_epoch_end", 3),
        *steps[1],
        ("on_epoch_end", 6),
        ("on_train_end", 6),
        ("teardown", 6),
    ]
    assert recorder.evaluated == [False, True]  # eval_interval=2: only the second epoch


def test_a_callback_stops_the_run_which_still_evaluates_and_ends(tiny_config, tmp_path):
    recorder = Recorder(stop_at=2)
    result = train(tiny_config("train.epochs=2"), tmp_path / "run", callbacks=[recorder], verbose=False)
    assert result["stopped"] == "enough"
    assert [hook for hook, _ in recorder.events] == [
        "on_train_start",
        "on_step_end",
        "on_step_end",
        "on_epoch_end",
        "on_train_end",
        "teardown",
    ]
    assert recorder.evaluated == [True]  # the partial epoch is evaluated


def test_teardown_runs_when_training_raises(tiny_config, tmp_path):
    recorder = Recorder(raise_at=1)
    with pytest.raises(RuntimeError, match="boom"):
        train(tiny_config("train.epochs=1"), tmp_path / "run", callbacks=[recorder], verbose=False)
    assert recorder.events == [("on_train_start", 0), ("on_step_end", 1), ("teardown", 1)]
