"""``train.max_time`` with ``train.schedule: time``: the run's length is fitted to the budget, the
final evaluation is kept inside it, and the plan survives a kill (``TimeBudget``)."""

from types import SimpleNamespace

import pytest

from balancedet.engine import callbacks as callbacks_module
from balancedet.engine import train as train_module
from balancedet.engine.callbacks import TimeBudget
from balancedet.engine.checkpoint import load_checkpoint
from balancedet.engine.train import train


class FakeRun(SimpleNamespace):
    """The part of ``TrainState`` that ``TimeBudget`` reads, on a clock the test moves."""

    def elapsed(self) -> float:
        return self.clock


def fake_run(**fields) -> FakeRun:
    defaults = dict(clock=0.0, step=0, total_steps=500, plan_fixed=False, plan_note=None, stop=None)
    return FakeRun(**{**defaults, "final_reserve": 0.0, **fields})


def run_steps(budget: TimeBudget, state: FakeRun, steps: int, seconds_per_step: float) -> None:
    for _ in range(steps):
        state.step += 1
        state.clock += seconds_per_step
        budget.on_step_end(state)


def test_plan_fits_the_steps_left_before_the_final_reserve():
    budget = TimeBudget(100.0, fit_schedule=True, fixed_share=0.8)
    state = fake_run(clock=10.0)  # 10 s of data loading before the first step
    budget.deadline, budget.first_step = 90.0, 0  # 10 s reserved for the final evaluation
    run_steps(budget, state, 2, 3.0)  # the first two steps are slow (kernel set-up) and not timed
    run_steps(budget, state, TimeBudget.CALIBRATION, 0.5)
    # at step 14, t = 10 + 6 + 6 = 22 s: (90 - 22) / 0.5 = 136 steps more
    assert state.total_steps == 14 + 136 - 2  # two steps' slack
    assert not state.plan_fixed and state.stop is None

    state.clock += 30.0  # an evaluation, or the host slowed down: the next plan shrinks
    run_steps(budget, state, TimeBudget.REPLAN_EVERY, 0.5)
    # step 39, t = 64.5 s; 37 steps since the reference (step 2, t = 16 s): 48.5 / 37 = 1.311 s/step,
    # (90 - 64.5) / 1.311 = 19.5 steps more
    assert state.total_steps == 39 + 19 - 2
    assert not state.plan_fixed  # 39 < 0.8 x 56: the decay is still ahead, the next plan may move it
    run_steps(budget, state, 8, 0.5)  # step 47 >= 0.8 x 56 = 44.8: the decay is passed, the plan kept
    run_steps(budget, state, TimeBudget.REPLAN_EVERY - 8, 0.5)
    assert state.plan_fixed and state.total_steps >= 58


def test_the_plan_follows_the_host_until_the_decay_then_only_the_deadline_acts():
    budget = TimeBudget(100.0, fit_schedule=True, fixed_share=0.8)
    state = fake_run()
    budget.deadline, budget.first_step = 90.0, 0
    run_steps(budget, state, 2 + TimeBudget.CALIBRATION, 1.0)
    assert state.total_steps == 14 + 76 - 2
    run_steps(budget, state, TimeBudget.REPLAN_EVERY, 0.5)  # the host speeds up: the run grows
    # step 39, t = 26.5 s: 24.5 s / 37 steps = 0.662 s/step, (90 - 26.5) / 0.662 = 95.9 steps more
    assert state.total_steps == 39 + 95 - 2 and not state.plan_fixed
    while not state.plan_fixed and state.clock < 90.0:
        run_steps(budget, state, 1, 0.5)
    planned = state.total_steps
    assert state.plan_fixed and state.step >= 0.8 * planned and state.clock < 80.0
    run_steps(budget, state, 40, 2.0)  # the host slows down after the decay: the plan is kept...
    assert state.total_steps == planned
    assert state.stop is not None and "train.max_time=100 s reached" in state.stop  # ...and the deadline holds
    assert state.clock > 90.0


def test_without_fit_schedule_only_the_deadline_acts():
    budget = TimeBudget(50.0)
    state = fake_run(final_reserve=5.0)
    budget.deadline = 45.0
    run_steps(budget, state, 44, 1.0)
    assert state.total_steps == 500 and state.stop is None
    run_steps(budget, state, 2, 1.0)
    assert state.stop.startswith("train.max_time=50 s reached after step 46 (46.0 s, 5.0 s kept")


@pytest.mark.parametrize("bad", [0, -1, True, "10"])
def test_max_time_must_be_a_positive_number(bad):
    with pytest.raises(ValueError, match="train.max_time"):
        TimeBudget(bad)


def test_schedule_time_needs_max_time(tiny_config, tmp_path):
    with pytest.raises(ValueError, match="train.schedule=time fits the schedule to train.max_time"):
        train(tiny_config("train.schedule=time"), output=tmp_path / "run", verbose=False)
    with pytest.raises(ValueError, match="train.schedule='weeks'"):
        train(tiny_config("train.schedule=weeks"), output=tmp_path / "run", verbose=False)


class TickClock:
    """``time.perf_counter`` for the trainer: each reading ``tick`` seconds after the last. Every step then
    costs the trainer's clock the same whatever the machine's load, which a real clock does not: a rise in
    load after the plan was fixed let the deadline cut the run on a busy machine."""

    def __init__(self, tick: float):
        self.tick, self.now = tick, 0.0

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


def test_a_run_fitted_to_its_budget_ends_on_its_plan_with_the_decay_at_its_share(
    tiny_config, tmp_path, capsys, monkeypatch
):
    clock = TickClock(0.5)
    for module in (callbacks_module, train_module):
        monkeypatch.setattr(module, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    # 2 "epochs" with the decay after the first: at half of whatever the budget allows
    config = tiny_config(
        "train.schedule=time", "train.max_time=30", "train.epochs=2", "train.milestones=[1]", "train.lr=0.01"
    )
    result = train(config, output=tmp_path / "run", verbose=True)
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("balancedet train: retinanet on ")
    assert "ends within 30 s wall (data, training and the final evaluation), the schedule fitted to it" in out
    assert "plan: " in out
    last = load_checkpoint(result["output"] / "weights" / "last.pt")
    total = last["total_steps"]
    assert total > 2 * 3  # not the epoch count: what fits in 30 s
    assert result["stopped"] is None and last["step"] == total  # ended on its plan, not cut by the deadline
    # on the trainer's clock the budget is kept, the final evaluation inside it
    assert result["elapsed"] <= 30 and result["elapsed"] == pytest.approx(clock.now, abs=1.0)
    assert last["rows"][-1]["lr"] == pytest.approx(0.001)  # decayed at half of the plan
    assert last["rows"][0]["lr"] == pytest.approx(0.01)
