"""``balancedet bench train``: time to accuracy of the main job, in one run.

Trains a preset (default: the one ``balancedet train`` uses) exactly as ``balancedet train`` does,
under its own time budget (``train.max_time``, the schedule fitted to it), and evaluates the weights
on the validation split when the run's wall time passes each mark (default 2.5 and 5 minutes) and at
the end (10 minutes with the default budget of 570 s plus start-up). The marks' evaluations are not
charged to the run: the run's clock is moved on by their duration, so the training is the one a
plain ``balancedet train`` would do (same steps, same schedule), only observed on the way.

The AP at a mark is that of the weights of the 10-minute run at that time, before its learning rate
has decayed; a run given only that budget would decay earlier and do better. It shows how fast the
run gets where, on this host: the first line names the CPU, and ``--avx2`` prints how to approximate
an AVX2-only host on an AVX-512 one.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from balancedet.bench.common import format_table
from balancedet.engine.callbacks import Callback, TrainState
from balancedet.engine.evaluate import evaluate_model


class Marks(Callback):
    """Evaluate the current weights when ``state.elapsed()`` passes each mark (seconds); the
    evaluation's own time is taken off the run's clock (``state.start_time`` moves on by it)."""

    def __init__(self, marks: list[float]):
        self.marks = sorted(marks)
        self.rows: list[dict[str, Any]] = []

    def on_step_end(self, state: TrainState) -> None:
        if not self.marks or state.elapsed() < self.marks[0]:
            return
        mark = self.marks.pop(0)
        elapsed = state.elapsed()
        start = time.perf_counter()
        report, _ = evaluate_model(state.model, state.val_set, state.config, state.device, state.amp)
        state.model.train()
        state.start_time += time.perf_counter() - start
        self.rows.append(row(mark, elapsed, state.step, report["metrics"]))


def row(mark: float, elapsed: float, step: int, metrics: dict[str, float]) -> dict[str, Any]:
    return {
        "mark": f"{mark:g} s",
        "wall s": f"{elapsed:.0f}",
        "step": step,
        "AP": f"{metrics['AP']:.3f}",
        "AP50": f"{metrics['AP50']:.3f}",
        "AP75": f"{metrics['AP75']:.3f}",
    }


def parser() -> argparse.ArgumentParser:
    from balancedet.cli import DEFAULT_PRESET

    p = argparse.ArgumentParser(prog="balancedet bench train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_PRESET, help=f"preset or YAML (default {DEFAULT_PRESET})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--marks", default="150,300", help="wall-time marks in seconds, comma-separated")
    p.add_argument("--output", default="runs/bench/train", help="run folder")
    return p


def main(argv: list[str] | None = None) -> int:
    from balancedet.engine.config import load_config
    from balancedet.engine.train import train

    args = parser().parse_args(argv)
    config = load_config(args.config, args.overrides)
    marks = [float(m) for m in args.marks.split(",") if m.strip()]
    recorder = Marks(marks)
    result = train(config, output=args.output, callbacks=[recorder], verbose=True)
    final = row(result["elapsed"], result["elapsed"], result_steps(result), result["metrics"])
    final["mark"] = "end"
    rows = [*recorder.rows, final]
    print(format_table(list(rows[0]), [list(r.values()) for r in rows]))
    elapsed = result["elapsed"]
    print(f"run folder {result['output']}; train() took {elapsed:.0f} s of wall time, the marks' evaluations excluded")
    return 0


def result_steps(result: dict[str, Any]) -> int:
    from balancedet.engine.checkpoint import load_checkpoint

    return int(load_checkpoint(result["output"] / "weights" / "last.pt")["step"])
