"""``balancedet ablate``: every cell of a grid or a study times every seed, as normal run folders, resumable.

``balancedet ablate --config C --grid section.key=v1,v2 [--grid ...]`` trains the product of the grids'
values on preset ``C``; ``--study NAME`` trains one of ``balancedet.engine.studies.STUDIES``. Each cell
is trained with ``train.seed`` = 0 .. ``--seeds`` - 1, in ``DIR/<cell>_seed<k>``: a grid cell is named by
its settings (``cls_loss=ghmc,box_loss=giou``), a study cell by the study. The values are YAML, parsed as
``--set`` parses them, and every run's configuration is built before the first run starts, so a value or
a key that the model type rejects fails at once, naming the cell.

Resumable: a run whose folder has a ``metrics.json`` is finished and skipped; one killed after writing a
``weights/last.pt`` continues from it (``train(None, resume=last.pt)``: the weights of a run that was
never interrupted); one killed before its first checkpoint starts again. A run folder trained with
another configuration (other ``--set`` values, another schedule) is an error, never mixed in. A run whose
loss diverges (``FloatingPointError``) is recorded as diverged, and the others go on.

The ablation folder holds, rewritten after every run:

- ``ablation.csv``: one row per run: the run folder, cell, seed, status, the cell's preset and settings
  (their values in the run's configuration), every metric of its ``metrics.json``, and ``time``, the wall
  seconds the run took over all its processes (``ablate.json`` in the run folder keeps the count);
- ``summary.md``: per cell, the mean and the sample standard deviation (ddof = 1) over its seeds of AP,
  AP50, AP75 (and APs, APm, APl where the data have such objects), with the number of seeds N, ranked by
  mean AP; for a study, whether each ordering its papers report holds here;
- ``ablation.png``: mean AP per cell, ranked, with the standard deviation as error bars.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import re
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: training machines have no screen

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from balancedet.engine.callbacks import Callback, TrainState  # noqa: E402
from balancedet.engine.config import load_config, parse_override  # noqa: E402
from balancedet.engine.evaluate import METRIC_KEYS  # noqa: E402
from balancedet.engine.studies import STUDIES, Cell, Claim, Study, study_schedule  # noqa: E402
from balancedet.engine.train import train  # noqa: E402

__all__ = [
    "CellSummary",
    "Run",
    "ablate",
    "cell_key",
    "execute",
    "grid_cells",
    "plan_runs",
    "read_rows",
    "run_ablation",
    "summarize",
]

#: The metrics of ``summary.md``: AP, AP50, AP75 always; the size ranges where a run measured them.
SUMMARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_OPTIONAL = ("APs", "APm", "APl")
RECORD = "ablate.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")  # in a value; a grid cell's name adds "=" and ","
_NAME = re.compile(r"[A-Za-z0-9._+=,-]+")
_MAX_NAME = 200  # characters of a cell name; with "_seed<k>" within a file system's 255


@dataclass(frozen=True)
class Run:
    """One training of an ablation: ``cell`` with ``train.seed=seed`` in ``folder``, as ``config`` says."""

    cell: Cell
    seed: int
    folder: Path
    config: dict[str, Any]
    preset: str


@dataclass(frozen=True)
class CellSummary:
    """A cell's runs: ``planned`` seeds, of which ``finished`` have metrics and ``diverged`` diverged;
    per metric the ``mean``, the sample ``std`` (ddof = 1; NaN for fewer than two values) and the number
    ``n`` of runs that measured it (a run without large objects has no APl); the mean ``time`` (seconds)."""

    cell: str
    planned: int
    finished: int
    diverged: int
    mean: dict[str, float]
    std: dict[str, float]
    n: dict[str, int]
    time: float


def cell_key(text: str) -> str:
    """The dotted key of an override ``section.key[.argument]=value``."""
    return text.split("=", 1)[0].strip()


def _overlap(a: str, b: str) -> bool:
    """Whether two dotted keys set the same value (``model.cls_loss_args`` covers ``...args.gamma``)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _split_values(raw: str) -> list[str]:
    """``v1,v2,...`` split at the commas outside brackets and braces (``[8, 11],[4]`` is two values)."""
    values, depth, start = [], 0, 0
    for i, char in enumerate(raw):
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            values.append(raw[start:i].strip())
            start = i + 1
    values.append(raw[start:].strip())
    return values


def _safe(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-")


def grid_cells(grid: Sequence[str]) -> list[Cell]:
    """The cells of ``--grid section.key=v1,v2,...`` options: the product of their values, the first grid
    varying slowest; each cell named ``key=value,...`` (the key without its section)."""
    axes: list[list[tuple[str, str]]] = []
    for text in grid:
        if "=" not in text:
            raise ValueError(f"--grid {text!r}: expected section.key=value1,value2,... e.g. model.cls_loss=focal,ghmc")
        key, raw = cell_key(text), text.split("=", 1)[1]
        values = _split_values(raw)
        if any(not value for value in values):
            raise ValueError(f"--grid {text!r}: an empty value (values are separated by commas)")
        if len(set(values)) != len(values):
            raise ValueError(f"--grid {text!r}: a value is given twice")
        if any(_overlap(key, other) for other, _ in (axis[0] for axis in axes)):
            raise ValueError(f"--grid {text!r}: {key} is already varied by another --grid")
        if _overlap(key, "train.seed"):
            raise ValueError(f"--grid {text!r}: the seeds are --seeds N (train.seed = 0 .. N - 1)")
        for value in values:
            try:
                parse_override(f"{key}={value}")
            except ValueError as error:
                raise ValueError(f"--grid {text!r}: {error}") from None
        axes.append([(key, value) for value in values])
    if not axes:
        raise ValueError("--config C needs at least one --grid section.key=value1,value2,...")
    short = [key.split(".", 1)[1] for key, _ in (axis[0] for axis in axes)]
    if len(set(short)) != len(short):  # the same key name in two sections: name the cells by full keys
        short = [key for key, _ in (axis[0] for axis in axes)]
    cells = []
    for combination in itertools.product(*axes):
        name = ",".join(f"{s}={_safe(value) or 'empty'}" for s, (_, value) in zip(short, combination, strict=True))
        cells.append(Cell(name, tuple(f"{key}={value}" for key, value in combination)))
    _check_names(cells)
    return cells


def _check_names(cells: Sequence[Cell]) -> None:
    seen: dict[str, Cell] = {}
    for cell in cells:
        if not _NAME.fullmatch(cell.name) or len(cell.name) > _MAX_NAME:
            raise ValueError(
                f"ablation cell {cell.name!r}: a cell name must be 1 to {_MAX_NAME} of the characters "
                "A-Z a-z 0-9 . _ + - = ,"
            )
        if cell.name in seen:
            raise ValueError(
                f"ablation cells {list(seen[cell.name].overrides)} and {list(cell.overrides)} both make the run "
                f"folders {cell.name}_seed*: give values that differ in letters or digits"
            )
        seen[cell.name] = cell


def plan_runs(study: Study, seeds: int, overrides: Sequence[str], output: Path) -> list[Run]:
    """Every run of ``study`` (cells x seeds) with its configuration: the preset <- the study's dataset
    and schedule <- ``overrides`` (``--set``) <- the cell <- ``train.seed``. Raises ``ValueError`` naming
    the cell before anything trains."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds {seeds!r}: expected a positive number of seeds")
    _check_names(study.cells)
    user = [cell_key(text) for text in overrides]
    if any(_overlap(key, "train.seed") for key in user):
        raise ValueError("--set train.seed: the seeds are --seeds N (train.seed = 0 .. N - 1)")
    for cell in study.cells:
        clash = [(own, key) for own in map(cell_key, cell.overrides) for key in user if _overlap(key, own)]
        if clash:
            own, key = clash[0]
            raise ValueError(
                f"ablation cell {cell.name!r} sets {own}, which --set {key} gives too: the cell's value would "
                "replace yours in some cells only (vary it with --grid instead)"
            )
    base = study.base_overrides(output)
    runs = []
    for cell in study.cells:
        preset = cell.preset or study.preset
        for seed in range(seeds):
            try:
                config = load_config(preset, [*base, *overrides, *cell.overrides, f"train.seed={seed}"])
            except ValueError as error:
                raise ValueError(f"ablation cell {cell.name!r}: {error}") from None
            runs.append(Run(cell, seed, output / f"{cell.name}_seed{seed}", config, preset))
    return runs


class RunClock(Callback):
    """``ablate.json`` in the run folder: the cell, the seed and the wall seconds the run has taken over
    all its processes (``before``: those of the processes before a resume), written after every step,
    so a killed run's time is kept up to its last step."""

    def __init__(self, run: Run, before: float = 0.0):
        self.run, self.before, self.state = run, before, None

    def on_train_start(self, state: TrainState) -> None:
        self.state = state
        self.write()

    def on_step_end(self, state: TrainState) -> None:
        self.write()

    def on_train_end(self, state: TrainState) -> None:
        self.write()

    def write(self, diverged: str | None = None) -> None:
        seconds = self.before + (self.state.elapsed() if self.state is not None else 0.0)
        record = {"cell": self.run.cell.name, "seed": self.run.seed, "time": round(seconds, 2), "diverged": diverged}
        path = self.run.folder / RECORD
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{RECORD}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(path)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error}): delete it to train this run again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        items: dict[str, Any] = {}
        for key, inner in value.items():
            items.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return items
    return {prefix: value}


#: Settings that change how a run is executed, not what it computes (the same batches, the same
#: items bit for bit): a rerun with other values still counts the runs done before.
EXECUTION_KEYS = frozenset({"data.cache", "train.workers"})


def _check_same_config(run: Run) -> None:
    """A run folder's ``args.yaml`` must be this run's configuration: a rerun with other settings must
    not count an old run as one of its own."""
    path = run.folder / "args.yaml"
    if not path.is_file():
        raise ValueError(f"{run.folder}: holds results but no args.yaml: not a balancedet run folder")
    try:
        found = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from None
    # through YAML as args.yaml was, so that tuples and lists, ints and floats compare as written
    wanted = yaml.safe_load(yaml.safe_dump(run.config, sort_keys=False))
    if found == wanted:
        return
    old, new = _flatten(found if isinstance(found, dict) else {}), _flatten(wanted)
    differ = [k for k in sorted(set(old) | set(new)) if old.get(k, "(absent)") != new.get(k, "(absent)")]
    differ = [k for k in differ if k not in EXECUTION_KEYS]
    if not differ:
        return
    shown = "; ".join(f"{k}: {old.get(k, '(absent)')!r} there, {new.get(k, '(absent)')!r} now" for k in differ[:5])
    more = f" and {len(differ) - 5} more" if len(differ) > 5 else ""
    raise ValueError(
        f"{run.folder}: trained with another configuration ({shown}{more}): give another --output, or delete "
        "the folder to train it again"
    )


def execute(run: Run, verbose: bool = True) -> str:
    """Train ``run`` unless its folder says it is done: returns ``"skipped"`` (finished or diverged
    before), ``"resumed"``, ``"trained"`` or ``"diverged"``."""
    metrics, last = run.folder / "metrics.json", run.folder / "weights" / "last.pt"
    record = _read_json(run.folder / RECORD)
    diverged = record is not None and record.get("diverged") is not None
    if metrics.is_file() or last.is_file() or diverged:
        _check_same_config(run)
    if metrics.is_file() or diverged:
        return "skipped"
    clock = RunClock(run, before=float(record.get("time") or 0.0) if record is not None and last.is_file() else 0.0)
    try:
        if last.is_file():
            train(None, resume=last, callbacks=[clock], verbose=verbose)
            return "resumed"
        if run.folder.exists():
            # killed before its first checkpoint: nothing to continue from
            if not (run.folder / "args.yaml").is_file():
                raise ValueError(f"{run.folder}: exists and is not a balancedet run folder: give another --output")
            shutil.rmtree(run.folder)
        train(run.config, output=run.folder, callbacks=[clock], verbose=verbose)
        return "trained"
    except FloatingPointError as error:
        clock.write(diverged=str(error))
        return "diverged"


def _value(config: dict[str, Any], key: str) -> str:
    """The value of dotted ``key`` in ``config`` as ``--set`` would write it, or "" where it has none."""
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return ""
        value = value[part]
    return value if isinstance(value, str) else json.dumps(value)


def read_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """The ``ablation.csv`` rows of the runs that are done (finished or diverged), in plan order;
    a metric without a value (``null`` in ``metrics.json``) is NaN."""
    settings: list[str] = []
    for run in runs:
        settings += [k for k in map(cell_key, run.cell.overrides) if k not in settings]
    rows = []
    for run in runs:
        metrics = _read_json(run.folder / "metrics.json")
        record = _read_json(run.folder / RECORD) or {}
        if metrics is None and record.get("diverged") is None:
            continue
        row: dict[str, Any] = {
            "run": run.folder.name,
            "cell": run.cell.name,
            "seed": run.seed,
            "status": "finished" if metrics is not None else "diverged",
            "config": run.preset,
        }
        row.update({key: _value(run.config, key) for key in settings})
        for key in METRIC_KEYS:
            value = (metrics or {}).get(key)
            row[key] = float(value) if isinstance(value, (int, float)) else math.nan
        row["time"] = float(record["time"]) if record.get("time") is not None else math.nan
        rows.append(row)
    return rows


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    if not rows:
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", newline="") as handle:
        out = csv.DictWriter(handle, fieldnames=list(rows[0]))
        out.writeheader()
        for row in rows:
            out.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    tmp.replace(path)


def summarize(rows: Sequence[dict[str, Any]], cells: Sequence[Cell], seeds: int) -> list[CellSummary]:
    """Per cell, the mean and sample standard deviation (ddof = 1) of each metric over its finished
    runs, ranked by mean AP (cells without one last, in their order)."""
    summaries = []
    for cell in cells:
        own = [r for r in rows if r["cell"] == cell.name]
        done = [r for r in own if r["status"] == "finished"]
        mean, std, n = {}, {}, {}
        for key in SUMMARY_METRICS:
            values = np.array([r[key] for r in done if math.isfinite(r[key])], dtype=float)
            n[key] = len(values)
            mean[key] = float(values.mean()) if len(values) else math.nan
            std[key] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        times = [r["time"] for r in done if math.isfinite(r["time"])]
        time = float(np.mean(times)) if times else math.nan
        diverged = sum(r["status"] == "diverged" for r in own)
        summaries.append(CellSummary(cell.name, seeds, len(done), diverged, mean, std, n, time))
    # sorted() is stable: equal means and cells without an AP keep the study's order
    return sorted(summaries, key=lambda s: -s.mean["AP"] if math.isfinite(s.mean["AP"]) else math.inf)


def _format(summary: CellSummary, key: str) -> str:
    mean, std, n = summary.mean[key], summary.std[key], summary.n[key]
    if not math.isfinite(mean):
        return "-"
    text = f"{mean:.3f} ± {std:.3f}" if math.isfinite(std) else f"{mean:.3f}"
    return text if n == summary.finished else f"{text} (N={n})"


def _claim_line(claim: Claim, by_cell: dict[str, CellSummary]) -> str:
    better, worse = by_cell.get(claim.better), by_cell.get(claim.worse)
    if better is None or worse is None:
        missing = claim.better if better is None else claim.worse
        return f"- {claim} ({claim.source}): cell {missing} is not in this ablation"
    a, b = better.mean["AP"], worse.mean["AP"]
    if not (math.isfinite(a) and math.isfinite(b)):
        return f"- {claim} ({claim.source}): not measured yet"
    holds = a > b if claim.strict else a >= b
    diff = a - b
    se = math.sqrt(sum(s.std["AP"] ** 2 / s.n["AP"] for s in (better, worse)))
    spread = f", standard error {se:.3f}" if math.isfinite(se) else ""
    return (
        f"- {claim} ({claim.source}): {'holds' if holds else 'does not hold'} here: AP {_format(better, 'AP')} "
        f"vs {_format(worse, 'AP')} (difference {diff:+.3f}{spread})"
    )


def write_summary(
    study: Study, summaries: Sequence[CellSummary], seeds: int, overrides: Sequence[str], path: Path
) -> None:
    """``summary.md``: the ranked table of ``summaries`` and the study's claims."""
    metrics = [k for k in SUMMARY_METRICS if k not in _OPTIONAL or any(s.n[k] for s in summaries)]
    lines = [f"# Ablation {study.name}", ""]
    if study.about:
        lines += [f"{study.about}.", ""]
    settings = f"`{' '.join(overrides)}`" if overrides else "none"
    lines += [
        f"Preset `{study.preset}`, {len(study.cells)} cells x {seeds} seeds (`train.seed` 0 to {seeds - 1}); "
        f"--set: {settings}.",
        *([f"Every cell: `{' '.join(study.schedule)}`, digits options {study.digits}."] if study.digits else []),
        "Mean ± sample standard deviation (ddof = 1) over each cell's seeds; N = runs with metrics; ranked by mean AP.",
        "",
        "| rank | cell | N | " + " | ".join(metrics) + " | time (s) |",
        "|---|---|---|" + "---|" * len(metrics) + "---|",
    ]
    for rank, s in enumerate(summaries, 1):
        count = f"{s.finished}/{s.planned}" + (f", {s.diverged} diverged" if s.diverged else "")
        time = f"{s.time:.0f}" if math.isfinite(s.time) else "-"
        lines.append(f"| {rank} | {s.cell} | {count} | " + " | ".join(_format(s, k) for k in metrics) + f" | {time} |")
    if study.claims:
        lines += ["", "## The cells", ""]
        for cell in study.cells:
            made = " ".join(f"`{o}`" for o in cell.overrides) or "as it is"
            lines.append(f"- {cell.name}: `{cell.preset or study.preset}` {made}")
        by_cell = {s.cell: s for s in summaries}
        lines += ["", "## The papers' orderings (mean AP)", "", *(_claim_line(c, by_cell) for c in study.claims)]
    path.write_text("\n".join(lines) + "\n")


def plot_ablation(summaries: Sequence[CellSummary], title: str, path: Path) -> None:
    """``ablation.png``: mean AP per cell, ranked, the sample standard deviation as error bars."""
    shown = [s for s in summaries if math.isfinite(s.mean["AP"])]
    if not shown:
        return
    means = [s.mean["AP"] for s in shown]
    errors = [s.std["AP"] if math.isfinite(s.std["AP"]) else 0.0 for s in shown]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(shown) + 1.5), 3.8))
    ax.bar(range(len(shown)), means, yerr=errors, capsize=4, color="tab:blue", alpha=0.8)
    for i, (s, error) in enumerate(zip(shown, errors, strict=True)):
        ax.text(i, s.mean["AP"] + error, f"{s.mean['AP']:.3f}\nN={s.n['AP']}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(shown)), [s.cell for s in shown], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, max(m + e for m, e in zip(means, errors, strict=True)) * 1.2 or 1.0)  # AP is never negative
    ax.set_ylabel("AP")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(study: Study, runs: Sequence[Run], seeds: int, overrides: Sequence[str], output: Path) -> None:
    """``ablation.csv``, ``summary.md`` and ``ablation.png`` of the runs done so far."""
    rows = read_rows(runs)
    write_csv(rows, output / "ablation.csv")
    summaries = summarize(rows, study.cells, seeds)
    write_summary(study, summaries, seeds, overrides, output / "summary.md")
    plot_ablation(summaries, f"{study.name}: mean AP ± std over seeds", output / "ablation.png")


def ablate(
    study: Study,
    seeds: int = 3,
    overrides: Sequence[str] = (),
    output: Path | str | None = None,
    verbose: bool = True,
    cells: Sequence[str] | None = None,
) -> Path:
    """Train every cell of ``study`` with ``seeds`` seeds in ``output`` (default ``runs/ablate/<name>``),
    skipping the runs done and resuming the killed ones; returns the folder with ``ablation.csv``,
    ``summary.md`` and ``ablation.png``. ``cells`` (names): train only those cells' runs now, in the
    study's order; the reports still cover every cell, with the runs done so far."""
    output = Path(output or Path("runs/ablate") / study.name)
    runs = plan_runs(study, seeds, list(overrides), output)
    chosen = runs
    if cells is not None:
        names = [cell.name for cell in study.cells]
        unknown = [name for name in cells if name not in names]
        if unknown or not cells:
            raise ValueError(
                f"--cells {','.join(cells)}: {'no such cell ' + ', '.join(unknown) if unknown else 'none given'} "
                f"(cells of {study.name}: {', '.join(names)})"
            )
        chosen = [run for run in runs if run.cell.name in set(cells)]
    output.mkdir(parents=True, exist_ok=True)
    timed = {run.cell.name for run in runs if run.config["train"]["schedule"] == "time"}
    if timed:
        # a schedule fitted to the wall time gives the cells of a busy machine fewer steps than the others
        warnings.warn(
            f"ablation {study.name}: {len(timed)} of {len(study.cells)} cells fit their schedule to "
            "train.max_time (train.schedule=time), so the runs may train different numbers of steps; "
            "--set train.schedule=epochs --set train.max_time=null compares them at equal steps",
            stacklevel=2,
        )
    if verbose:
        now = f"; now the {len(chosen)} of cells {', '.join(cells)}" if cells is not None else ""
        print(
            f"balancedet ablate {study.name}: {len(study.cells)} cells x {seeds} seeds = {len(runs)} runs in "
            f"{output}{now}"
        )
    for i, run in enumerate(chosen, 1):
        outcome = execute(run, verbose)
        if verbose:
            print(f"ablate [{i}/{len(chosen)}] {run.folder.name}: {outcome}", flush=True)
        write_reports(study, runs, seeds, overrides, output)
    if verbose:
        print((output / "summary.md").read_text())
        print(f"results in {output}: ablation.csv, summary.md, ablation.png")
    return output


def run_ablation(
    config: str | None,
    grid: Sequence[str],
    study: str | None,
    seeds: int = 3,
    overrides: Sequence[str] = (),
    output: Path | str | None = None,
    verbose: bool = True,
    cells: Sequence[str] | None = None,
    epochs: int | None = None,
) -> Path:
    """``balancedet ablate``: ``--study NAME`` (at its own length, or ``epochs`` of its data with the same
    shape: ``study_schedule``) or ``--config C --grid ...``; see ``ablate``."""
    if study is not None:
        if config is not None or grid:
            raise ValueError("--study runs a study's own presets and cells: drop --config/--grid (--set still applies)")
        if study not in STUDIES:
            raise ValueError(f"--study {study!r}: no such study (studies: {', '.join(STUDIES)})")
        chosen = STUDIES[study]
        if epochs is not None:
            chosen = dataclasses.replace(chosen, schedule=study_schedule(epochs))
        return ablate(chosen, seeds, overrides, output, verbose, cells)
    if epochs is not None:
        raise ValueError("--epochs sets a study's length: with --config/--grid, use --set train.epochs=... instead")
    if config is None:
        raise ValueError("give --study NAME, or --config C with --grid section.key=value1,value2,...")
    study_cells = grid_cells(grid)
    return ablate(Study(Path(config).stem, config, tuple(study_cells)), seeds, overrides, output, verbose, cells)
