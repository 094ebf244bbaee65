"""What a training run does besides training: the hooks of ``balancedet.engine.train.train`` and
the callbacks every run gets (progress bar, ``results.csv``/``results.png``, TensorBoard,
checkpoints, the ``train.max_time`` limit).

A callback overrides any of five hooks; each receives the run's ``TrainState``:

- ``on_train_start``: once, after the model, the data and (on resume) the checkpoint are loaded;
- ``on_step_end``: after every optimiser step (``state.step`` already counts it);
- ``on_epoch_end``: after every epoch, and after the partial epoch of a run stopped early, with its
  row appended to ``state.rows`` and, when the epoch was evaluated, ``state.report`` fresh;
- ``on_train_end``: once, after the final evaluation (``state.report`` holds it);
- ``teardown``: always last, even when training raised: release files and threads.

Callbacks run in list order. One stops a run by setting ``state.stop`` to the reason: the loop
ends after that step, evaluates, and ``on_epoch_end`` / ``on_train_end`` write the results as usual.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from balancedet.data import DetectionDataset
from balancedet.engine import distributed
from balancedet.engine.checkpoint import remove_temporaries, save_atomic
from balancedet.engine.data import eval_loader
from balancedet.engine.evaluate import per_class_table, summary_line, write_eval_artifacts, write_metrics_json
from balancedet.engine.plots import plot_results


@dataclass
class TrainState:
    """Everything a training run knows; the loop updates it, the callbacks read it.

    Fixed for the run: ``config``, ``output`` (the run folder), ``device``, ``amp`` (autocast dtype
    or None), ``model``, ``optimizer``, ``scaler``, ``train_set``, ``val_set``, ``steps_per_epoch``,
    ``total_steps``, ``start_time`` (``time.perf_counter()`` when ``train`` was called).

    Updated as it goes: ``step`` (optimiser steps done, over all runs of a resumed training),
    ``epoch`` (0-based, the one in progress), ``lr`` and ``losses`` (of the last step, floats),
    ``sums``/``sum_steps`` (loss sums, and the diagnostics' sums, over the steps since the last row,
    and their count),
    ``rows`` (one per epoch: ``results.csv``), ``best_ap``, ``report``/``predictions`` (the latest
    evaluation, at step ``report_step``), ``stop`` (why the run ends early, or None),
    ``skipped``/``skipped_total``/``bad_streak`` (steps skipped for a NaN or infinite loss since the
    last row, over the run, and in a row up to the last step: > 0 iff the last step was skipped).
    """

    config: dict[str, Any]
    output: Path
    device: torch.device
    amp: torch.dtype | None
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_set: DetectionDataset
    val_set: DetectionDataset
    steps_per_epoch: int
    total_steps: int
    start_time: float
    step: int = 0
    epoch: int = 0
    lr: float = 0.0
    losses: dict[str, float] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=dict)
    sum_steps: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    best_ap: float = -1.0
    report: dict[str, Any] | None = None
    predictions: list | None = None
    report_step: int = -1
    stop: str | None = None
    plan_fixed: bool = False
    plan_note: str | None = None
    final_reserve: float = 0.0
    skipped: int = 0
    skipped_total: int = 0
    bad_streak: int = 0
    ddp: torch.nn.Module | None = None  # the DDP wrapper of ``model`` that a distributed step calls

    @property
    def evaluated(self) -> bool:
        """Whether ``report`` is an evaluation of the current weights."""
        return self.report is not None and self.report_step == self.step

    def elapsed(self) -> float:
        """Seconds since this process called ``train`` (dataset loading included)."""
        return time.perf_counter() - self.start_time

    def meta(self) -> dict[str, Any]:
        """What ``eval`` and ``predict`` need to rebuild the model from a checkpoint."""
        return {
            "class_names": list(self.train_set.class_names),
            "category_ids": list(self.train_set.category_ids),
            "config": self.config,
        }

    def checkpoint(self) -> dict[str, Any]:
        """``last.pt``: the weights plus everything a resumed run needs to continue exactly."""
        return {
            **self.meta(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "total_steps": self.total_steps,
            "plan_fixed": self.plan_fixed,
            "rows": self.rows,
            "best_ap": self.best_ap,
            "epoch_sums": self.sums,
            "epoch_steps": self.sum_steps,
            "skipped": self.skipped,
            "skipped_total": self.skipped_total,
            "bad_streak": self.bad_streak,
            **distributed.rng_states(),  # every rank's: a collective call
        }

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from a ``checkpoint()``: the inverse of it, random states included."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.rows, self.best_ap = ckpt["step"], ckpt["rows"], ckpt["best_ap"]
        if ckpt.get("plan_fixed"):  # the schedule fitted to a time budget, fixed before the kill
            self.total_steps, self.plan_fixed = ckpt["total_steps"], True
        self.sums, self.sum_steps = dict(ckpt["epoch_sums"]), ckpt["epoch_steps"]
        # a last.pt written before non-finite steps were skipped has none
        self.skipped, self.skipped_total = ckpt.get("skipped", 0), ckpt.get("skipped_total", 0)
        self.bad_streak = ckpt.get("bad_streak", 0)
        distributed.restore_rng(ckpt)


class Callback:
    """A no-op for every hook; subclasses override those they need."""

    def on_train_start(self, state: TrainState) -> None:
        pass

    def on_step_end(self, state: TrainState) -> None:
        pass

    def on_epoch_end(self, state: TrainState) -> None:
        pass

    def on_train_end(self, state: TrainState) -> None:
        pass

    def teardown(self, state: TrainState) -> None:
        pass


def fire(callbacks: list[Callback], hook: str, state: TrainState) -> None:
    for callback in callbacks:
        getattr(callback, hook)(state)


def default_callbacks(config: dict[str, Any], verbose: bool) -> list[Callback]:
    """What every run does: TensorBoard, ``results.csv``, checkpoints, the time limit, the console, and
    with ``train.diagnostics`` the imbalance diagnostics, first: their sums must be in ``state.sums``
    before a checkpoint is written and their columns in the row before ``results.csv`` is."""
    # imported here: the diagnostics' callback subclasses ``Callback``, defined above
    from balancedet.engine.diagnostics import ImbalanceDiagnostics

    if not distributed.is_main():
        # the other ranks of a distributed run write nothing: their checkpoint calls give rank 0 their
        # random states, and they follow rank 0's plan
        return [CheckpointWriter(), RankSync()]
    callbacks: list[Callback] = [TensorBoardWriter(), ResultsWriter(), CheckpointWriter()]
    train = config["train"]
    if train.get("diagnostics", True):  # a last.pt written before the key (resumed) lacks it
        callbacks.insert(0, ImbalanceDiagnostics())
    if train["max_time"] is not None:
        # the plan is kept once the first decay is reached (1: no decay, revised to the end)
        share = min(train["milestones"]) / train["epochs"] if train["milestones"] else 1.0
        callbacks.append(TimeBudget(train["max_time"], train["schedule"] == "time", min(share, 1.0)))
    if verbose:
        callbacks.append(ProgressBar())
    if distributed.get_world_size() > 1:
        callbacks.append(RankSync())
    return callbacks


class RankSync(Callback):
    """In a distributed run, every rank takes rank 0's decisions after each hook (``train.max_time``'s stop,
    the schedule fitted to it: ``distributed.share_plan``), so that all step, evaluate and stop together."""

    def on_train_start(self, state: TrainState) -> None:
        distributed.share_plan(state)

    def on_step_end(self, state: TrainState) -> None:
        distributed.share_plan(state)

    def on_epoch_end(self, state: TrainState) -> None:
        distributed.share_plan(state)


class TimeBudget(Callback):
    """``train.max_time``: the run ends within ``max_time`` seconds of wall time since ``train`` was
    called, data loading (or generating the digits) and the final evaluation included.

    At the start it times the model on one validation batch (in eval mode, which draws no random
    numbers) and reserves ``1.25 x`` the forward time of the whole validation split plus
    ``FINAL_OVERHEAD`` seconds (COCO evaluation, plots, the last checkpoint) for the end of the run;
    training stops after the first step that ends past the rest (``state.stop``).

    With ``train.schedule: time`` it also fits the schedule to the budget, as ultralytics' ``time=``
    does: after ``CALIBRATION`` steps it measures the wall time per step (evaluations and data loading
    included) and sets ``state.total_steps`` to what fits before the stop; the warm-up and the
    milestones follow (``balancedet.engine.train.learning_rate``: a milestone at epoch ``m`` of
    ``epochs`` falls at ``m / epochs`` of the run). It plans again every ``REPLAN_EVERY`` steps, so
    that a host that slows down or speeds up moves the decay, until the first milestone is reached
    (``fixed_share`` of the run): from then on the plan is kept, so a decay never comes undone. The
    plan is saved in ``last.pt``, and a run resumed after it was fixed continues it step for step.
    """

    CALIBRATION = 12  # steps timed before the first plan (the first 2 are not: warm-up of kernels)
    REPLAN_EVERY = 25  # steps
    FINAL_OVERHEAD = 6.0  # seconds: COCO evaluation, PR/confusion/mosaic plots, best.pt and last.pt
    MARGIN = 0.01  # of max_time, for what no estimate sees (process exit, a slow last step)

    def __init__(self, max_time: float, fit_schedule: bool = False, fixed_share: float = 1.0):
        if isinstance(max_time, bool) or not isinstance(max_time, (int, float)) or not max_time > 0:
            raise ValueError(f"train.max_time={max_time!r}: expected a positive number of seconds, or null")
        self.max_time, self.fit_schedule, self.fixed_share = float(max_time), fit_schedule, fixed_share
        self.deadline = self.max_time
        self.reference: tuple[int, float] | None = None
        self.first_step = 0

    def on_train_start(self, state: TrainState) -> None:
        state.final_reserve = estimate_final_cost(state) + self.FINAL_OVERHEAD + self.MARGIN * self.max_time
        self.deadline = self.max_time - state.final_reserve
        self.first_step = state.step
        if self.fit_schedule and not state.plan_fixed:  # until the first plan: long enough to make it
            state.total_steps = max(state.total_steps, state.step + 3 + self.CALIBRATION)

    def on_step_end(self, state: TrainState) -> None:
        elapsed = state.elapsed()
        if state.step == self.first_step + 2:
            self.reference = (state.step, elapsed)
        since = state.step - self.first_step - 2 - self.CALIBRATION
        if self.fit_schedule and not state.plan_fixed and since >= 0 and since % self.REPLAN_EVERY == 0:
            self.plan(state, elapsed)
        if state.stop is None and elapsed > self.deadline:
            state.stop = (
                f"train.max_time={self.max_time:g} s reached after step {state.step} ({elapsed:.1f} s, "
                f"{state.final_reserve:.1f} s kept for the final evaluation)"
            )

    def plan(self, state: TrainState, elapsed: float) -> None:
        """``state.total_steps`` = the steps done + those that fit before the stop at the measured rate."""
        ref_step, ref_time = self.reference
        if state.step <= ref_step:
            return
        per_step = (elapsed - ref_time) / (state.step - ref_step)
        # two steps' slack: the run should end on its plan (the decay done), not be cut by the deadline
        total = state.step + max(0, int((self.deadline - elapsed) / per_step) - 2)
        state.total_steps = max(total, state.step + 1)
        state.plan_fixed = state.step >= self.fixed_share * state.total_steps
        state.plan_note = f"{state.total_steps} steps at {per_step:.2f} s/step (planned at step {state.step})"


@torch.no_grad()
def estimate_final_cost(state: TrainState) -> float:
    """Seconds the final evaluation's forward passes take: one validation batch timed in eval mode
    (the second of two calls: the first pays for one-off kernel set-up), times the number of batches."""
    if len(state.val_set) == 0:
        return 0.0
    images, _ = next(iter(eval_loader(state.val_set, state.config)))
    images = images.to(state.device)
    was_training = state.model.training
    state.model.eval()
    try:
        with torch.autocast(state.device.type, dtype=state.amp, enabled=state.amp is not None):
            for _ in range(2):
                start = time.perf_counter()
                state.model(images)
                seconds = time.perf_counter() - start
    finally:
        state.model.train(was_training)
    batches = -(-len(state.val_set) // images.shape[0])
    return 1.25 * seconds * batches


class TensorBoardWriter(Callback):
    """Event files in the run folder: ``train/<loss>`` and ``train/lr`` per step, ``val/<metric>``
    per evaluation. A resumed run purges the events logged after its checkpoint."""

    def __init__(self) -> None:
        self.writer: SummaryWriter | None = None

    def on_train_start(self, state: TrainState) -> None:
        self.writer = SummaryWriter(str(state.output), purge_step=state.step or None)

    def on_step_end(self, state: TrainState) -> None:
        for key, value in state.losses.items():
            self.writer.add_scalar(f"train/{key}", value, state.step)
        self.writer.add_scalar("train/lr", state.lr, state.step)

    def on_epoch_end(self, state: TrainState) -> None:
        if state.evaluated:
            for key, value in state.report["metrics"].items():
                self.writer.add_scalar(f"val/{key}", value, state.step)

    def teardown(self, state: TrainState) -> None:
        if self.writer is not None:
            self.writer.close()


class ResultsWriter(Callback):
    """``results.csv`` and ``results.png`` after every row; at the end the final evaluation's
    ``metrics.json``, ``PR_curve.png``, ``confusion_matrix.png``, ``val_batch*_labels.jpg`` and
    ``val_batch*_pred.jpg``."""

    def on_epoch_end(self, state: TrainState) -> None:
        write_results_csv(state.rows, state.output / "results.csv")
        plot_results(state.rows, state.output / "results.png")

    def on_train_end(self, state: TrainState) -> None:
        train = state.config["train"]
        batches = train.get("num_plot_batches", 3)  # a last.pt written before the key (resumed) lacks it
        write_eval_artifacts(state.report, state.predictions, state.val_set, state.output, batches, train["batch_size"])
        write_metrics_json(state.report["metrics"], state.output / "metrics.json")


def write_results_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per epoch; columns are the union over rows (evaluation may skip epochs)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as handle:
        out = csv.DictWriter(handle, fieldnames=columns)
        out.writeheader()
        for row in rows:
            out.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    tmp.replace(path)


class CheckpointWriter(Callback):
    """``weights/last.pt`` every ``train.checkpoint_interval`` steps, at every epoch's end and at the
    end; ``weights/best.pt`` (weights and metrics only) on a new best AP. Both written atomically; at
    the start, the temporary files of writes that a kill interrupted are removed."""

    def __init__(self) -> None:
        self.saved_step = -1

    def on_train_start(self, state: TrainState) -> None:
        if distributed.is_main():
            remove_temporaries(state.output / "weights")

    def on_step_end(self, state: TrainState) -> None:
        # an epoch's last step is saved by on_epoch_end, after its row and evaluation
        if state.step % state.config["train"]["checkpoint_interval"] == 0 and state.step % state.steps_per_epoch:
            self.save_last(state)

    def on_epoch_end(self, state: TrainState) -> None:
        self.save_best(state)
        self.save_last(state)

    def on_train_end(self, state: TrainState) -> None:
        if self.save_best(state) or self.saved_step != state.step:
            self.save_last(state)

    def save_last(self, state: TrainState) -> None:
        checkpoint = state.checkpoint()  # on every rank of a distributed run: it gathers their random states
        if distributed.is_main():
            save_atomic(checkpoint, state.output / "weights" / "last.pt")
        self.saved_step = state.step

    def save_best(self, state: TrainState) -> bool:
        """Write ``best.pt`` if the current weights' evaluation beats ``state.best_ap``."""
        ap = state.report["metrics"]["AP"] if state.evaluated else float("nan")
        if not ap > state.best_ap:  # NaN (no evaluation, no ground truth) never counts as better
            return False
        state.best_ap = ap
        if distributed.is_main():
            best = {**state.meta(), "model": state.model.state_dict(), "metrics": state.report["metrics"]}
            save_atomic(best, state.output / "weights" / "best.pt")
        return True


class ProgressBar(Callback):
    """A tqdm bar over the steps (epoch, losses, lr), a line per evaluation, and the final summary:
    why the run stopped early, the per-class AP table, the final metrics."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_train_start(self, state: TrainState) -> None:
        self.bar = tqdm(total=state.total_steps, initial=state.step, dynamic_ncols=True, unit="it")

    def on_step_end(self, state: TrainState) -> None:
        if self.bar.total != state.total_steps:  # the schedule was fitted to the time budget
            self.bar.total = state.total_steps
            self.bar.write(f"plan: {state.plan_note}")
        epochs = -(-state.total_steps // state.steps_per_epoch)
        losses = {k: f"{v:.3f}" for k, v in state.losses.items()}
        self.bar.set_postfix({"epoch": f"{state.epoch + 1}/{epochs}", **losses, "lr": f"{state.lr:.2g}"})
        self.bar.update(1)

    def on_epoch_end(self, state: TrainState) -> None:
        if state.evaluated:
            metrics = ", ".join(f"{k} {state.report['metrics'][k]:.3f}" for k in ("AP", "AP50", "AP75"))
            self.bar.write(f"epoch {state.rows[-1]['epoch']}: {metrics}")

    def on_train_end(self, state: TrainState) -> None:
        self.bar.close()
        if state.stop is not None:
            print(f"stopped early: {state.stop}")
        if state.skipped_total:
            print(f"skipped {state.skipped_total} steps of a NaN or infinite loss (results.csv: skipped_steps)")
        print(per_class_table(state.report, state.train_set.class_names))
        print(f"final: {summary_line(state.report['metrics'])} ({state.elapsed():.0f} s this run)")
        print(f"results in {state.output}")

    def teardown(self, state: TrainState) -> None:
        if self.bar is not None:
            self.bar.close()
