"""``balancedet ablate``: grid expansion, run folders, the csv and summary, resume, and the studies' settings.

The bookkeeping tests replace ``train`` by a stand-in that writes a run folder's files with known metrics;
one test trains a real tiny grid (``tests/engine/conftest.py``), kills a run and resumes the ablation."""

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from balancedet.cli import main as cli_main
from balancedet.engine import ablate as ablate_module
from balancedet.engine.ablate import ablate, grid_cells, plan_runs, read_rows, run_ablation, summarize
from balancedet.engine.build import build_remedies
from balancedet.engine.callbacks import Callback
from balancedet.engine.checkpoint import load_checkpoint
from balancedet.engine.evaluate import METRIC_KEYS
from balancedet.engine.studies import STUDIES, Cell, Claim, Study
from balancedet.engine.train import train as real_train
from balancedet.losses import GHMC, BinaryCrossEntropyLoss, FocalLoss, QualityFocalLoss
from balancedet.samplers import HardNegativeMiner, OHEMSampler
from tests.engine.conftest import TINY_RUN

#: a schedule in epochs (the digits presets fit theirs to a time budget)
EPOCH = ["train.schedule=epochs", "train.max_time=null", "train.epochs=1"]
# AP of the stand-in runs by (cls_loss, seed); the other metrics are derived from it
KNOWN_AP = {("focal", 0): 0.3, ("focal", 1): 0.5, ("ghmc", 0): 0.2, ("ghmc", 1): 0.2}


def known_metrics(config):
    ap = KNOWN_AP[(config["model"]["cls_loss"], config["train"]["seed"])]
    return {"AP": ap, "AP50": 2 * ap, "AP75": ap / 2, "APs": ap + 0.1, "APm": ap, "APl": None, "AR100": 0.9}


class FakeTrain:
    """``train`` that writes ``args.yaml`` and ``metrics.json`` (``known_metrics``) and calls the given
    callbacks' start and end with a run clock at ``elapsed`` seconds; records every call."""

    def __init__(self, elapsed=12.5, diverge=()):
        self.calls, self.elapsed, self.diverge = [], elapsed, set(diverge)

    def __call__(self, config, output=None, resume=None, callbacks=(), verbose=True):
        self.calls.append({"config": config, "output": output, "resume": resume})
        folder = Path(output)
        folder.mkdir(parents=True)
        (folder / "args.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        state = SimpleNamespace(elapsed=lambda: self.elapsed)
        for callback in callbacks:
            callback.on_train_start(state)
        if folder.name in self.diverge:
            raise FloatingPointError("step 3: loss is nan")
        (folder / "metrics.json").write_text(json.dumps(known_metrics(config)))
        for callback in callbacks:
            callback.on_train_end(state)
        return {"output": folder}


def grid_study(*grid):
    return Study("grid", "retinanet_digits", tuple(grid_cells(grid)))


def test_grid_is_the_product_of_the_values_named_by_the_settings():
    cells = grid_cells(["model.cls_loss=focal,ghmc", "model.box_loss=smooth_l1,giou"])
    assert [c.name for c in cells] == [
        "cls_loss=focal,box_loss=smooth_l1",
        "cls_loss=focal,box_loss=giou",
        "cls_loss=ghmc,box_loss=smooth_l1",
        "cls_loss=ghmc,box_loss=giou",
    ]
    assert cells[1].overrides == ("model.cls_loss=focal", "model.box_loss=giou")
    # commas inside brackets belong to a value; the name keeps its letters and digits
    cells = grid_cells(["train.milestones=[1, 2],[2]", "model.cls_loss_args.gamma=0.5,2"])
    assert [c.overrides for c in cells][:2] == [
        ("train.milestones=[1, 2]", "model.cls_loss_args.gamma=0.5"),
        ("train.milestones=[1, 2]", "model.cls_loss_args.gamma=2"),
    ]
    assert [c.name for c in cells] == [
        "milestones=1-2,cls_loss_args.gamma=0.5",
        "milestones=1-2,cls_loss_args.gamma=2",
        "milestones=2,cls_loss_args.gamma=0.5",
        "milestones=2,cls_loss_args.gamma=2",
    ]


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (["model.cls_loss"], "expected section.key=value1,value2"),
        (["model.cls_loss=focal,,ghmc"], "an empty value"),
        (["model.cls_loss=focal,focal"], "a value is given twice"),
        (["model.cls_loss_args={gamma: 1}", "model.cls_loss_args.gamma=2,5"], "already varied"),
        (["train.seed=0,1"], "--seeds N"),
        (["cls_loss=focal,ghmc"], "the key must be section.key"),
        (["model.anchor_sizes=[8 16],[8,16]"], "both make the run folders anchor_sizes=8-16_seed*"),
        ([], "at least one --grid"),
    ],
)
def test_a_bad_grid_is_a_clear_error(grid, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("*", r"\*")):
        grid_cells(grid)


def test_an_invalid_cell_fails_before_any_run(tmp_path, monkeypatch):
    fake = FakeTrain()
    monkeypatch.setattr(ablate_module, "train", fake)
    study = Study("grid", "gfl_digits", tuple(grid_cells(["model.cls_loss=qfl,ghmc", "model.num_convs=1,2"])))
    with pytest.raises(ValueError, match=r"ablation cell 'cls_loss=ghmc,num_convs=1'.*model.cls_loss='ghmc' is not"):
        ablate(study, seeds=1, output=tmp_path, verbose=False)
    study = Study("grid", "gfl_digits", tuple(grid_cells(["model.sampler=ohem"])))
    with pytest.raises(ValueError, match=r"cell 'sampler=ohem'.*model.sampler not used by model type 'gfl'"):
        ablate(study, 1, output=tmp_path, verbose=False)
    with pytest.raises(ValueError, match="sets model.cls_loss_args.gamma, which --set model.cls_loss_args gives too"):
        ablate(STUDIES["focal"], 1, ["model.cls_loss_args={gamma: 3}"], output=tmp_path, verbose=False)
    with pytest.raises(ValueError, match="--seeds N"):
        ablate(grid_study("model.cls_loss=focal"), 1, ["train.seed=4"], output=tmp_path, verbose=False)
    assert fake.calls == []


def test_runs_folders_csv_and_summary_numbers(tmp_path, monkeypatch):
    fake = FakeTrain(elapsed=12.5)
    monkeypatch.setattr(ablate_module, "train", fake)
    study = Study(
        "grid",
        "retinanet_digits",
        tuple(grid_cells(["model.cls_loss=ghmc,focal"])),
        claims=(
            Claim("cls_loss=focal", "cls_loss=ghmc", True, "test"),
            Claim("cls_loss=ghmc", "cls_loss=focal", False, "test"),
        ),
    )
    out = ablate(study, seeds=2, overrides=EPOCH, output=tmp_path / "abl", verbose=False)
    names = ["cls_loss=ghmc_seed0", "cls_loss=ghmc_seed1", "cls_loss=focal_seed0", "cls_loss=focal_seed1"]
    assert [Path(c["output"]).name for c in fake.calls] == names
    assert [c["config"]["train"]["seed"] for c in fake.calls] == [0, 1, 0, 1]
    assert all(c["config"]["train"]["epochs"] == 1 for c in fake.calls)

    with (out / "ablation.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["run", "cell", "seed", "status", "config", "model.cls_loss", *METRIC_KEYS, "time"]
    assert [r["run"] for r in rows] == names
    assert rows[2]["model.cls_loss"] == "focal" and rows[2]["config"] == "retinanet_digits"
    assert float(rows[3]["AP"]) == 0.5 and float(rows[3]["AP50"]) == 1.0 and rows[3]["APl"] == ""
    assert {r["time"] for r in rows} == {"12.5"} and {r["status"] for r in rows} == {"finished"}

    # by hand: focal AP {0.3, 0.5}: mean 0.4, sample std sqrt((0.1^2 + 0.1^2) / (2 - 1)) = 0.141;
    # AP50 {0.6, 1.0}: 0.8 +- 0.283; ghmc AP {0.2, 0.2}: 0.2 +- 0; no large objects: no APl column
    summary = (out / "summary.md").read_text()
    assert "| rank | cell | N | AP | AP50 | AP75 | APs | APm | time (s) |" in summary
    assert "| 1 | cls_loss=focal | 2/2 | 0.400 ± 0.141 | 0.800 ± 0.283 | 0.200 ± 0.071 |" in summary
    assert "| 2 | cls_loss=ghmc | 2/2 | 0.200 ± 0.000 | 0.400 ± 0.000 |" in summary
    # difference 0.2; standard error sqrt(0.141^2 / 2 + 0 / 2) = 0.1
    assert "- cls_loss=focal > cls_loss=ghmc (test): holds here" in summary
    assert "(difference +0.200, standard error 0.100)" in summary
    assert "- cls_loss=ghmc >= cls_loss=focal (test): does not hold here" in summary
    assert (out / "ablation.png").stat().st_size > 0

    summaries = summarize(read_rows(plan_runs(study, 2, EPOCH, out)), study.cells, 2)
    focal = summaries[0]
    assert focal.cell == "cls_loss=focal" and focal.n == {"AP": 2, "AP50": 2, "AP75": 2, "APs": 2, "APm": 2, "APl": 0}
    assert focal.std["AP"] == pytest.approx(math.sqrt(0.02)) and math.isnan(focal.mean["APl"])


def test_a_rerun_trains_only_what_is_missing(tmp_path, monkeypatch):
    study = grid_study("model.cls_loss=focal,ghmc")
    first = FakeTrain()
    monkeypatch.setattr(ablate_module, "train", first)
    ablate(study, seeds=1, overrides=EPOCH, output=tmp_path, verbose=False)
    done = tmp_path / "cls_loss=focal_seed0" / "metrics.json"
    stamp = done.stat().st_mtime_ns
    # ghmc's run killed before its first checkpoint: a folder with args.yaml and no weights
    (tmp_path / "cls_loss=ghmc_seed0" / "metrics.json").unlink()
    again = FakeTrain()
    monkeypatch.setattr(ablate_module, "train", again)
    ablate(study, seeds=2, overrides=EPOCH, output=tmp_path, verbose=False)
    assert [Path(c["output"]).name for c in again.calls] == [
        "cls_loss=focal_seed1",
        "cls_loss=ghmc_seed0",
        "cls_loss=ghmc_seed1",
    ]
    assert all(c["resume"] is None for c in again.calls)
    assert done.stat().st_mtime_ns == stamp
    # another schedule in the same folder: an error, not a mix of the two
    with pytest.raises(ValueError, match=r"cls_loss=focal_seed0: trained with another configuration \(train.epochs: 1"):
        ablate(study, seeds=1, overrides=[*EPOCH[:2], "train.epochs=2"], output=tmp_path, verbose=False)


def test_a_rerun_with_other_execution_settings_counts_the_runs_done(tmp_path, monkeypatch):
    """data.cache and train.workers change how a run reads its data, not what it computes (the same items,
    the same batches): a run saved before data.cache existed, or a rerun with more workers, is not
    trained again; any other setting that differs still is an error."""
    study = grid_study("model.cls_loss=focal")
    monkeypatch.setattr(ablate_module, "train", FakeTrain())
    ablate(study, seeds=1, overrides=EPOCH, output=tmp_path, verbose=False)
    args = tmp_path / "cls_loss=focal_seed0" / "args.yaml"
    saved = yaml.safe_load(args.read_text())
    del saved["data"]["cache"]  # written before the key existed
    args.write_text(yaml.safe_dump(saved, sort_keys=False))
    again = FakeTrain()
    monkeypatch.setattr(ablate_module, "train", again)
    ablate(study, seeds=1, overrides=[*EPOCH, "train.workers=2", "data.cache=false"], output=tmp_path, verbose=False)
    assert again.calls == []
    with pytest.raises(ValueError, match=r"another configuration \(data.flip: 0.5 there, 0.0 now\)"):
        ablate(study, seeds=1, overrides=[*EPOCH, "data.flip=0.0"], output=tmp_path, verbose=False)


def test_cells_trains_only_the_cells_named_and_reports_every_cell(tmp_path, monkeypatch):
    study = grid_study("model.cls_loss=focal,ghmc")
    first = FakeTrain()
    monkeypatch.setattr(ablate_module, "train", first)
    ablate(study, seeds=2, overrides=EPOCH, output=tmp_path, verbose=False, cells=["cls_loss=ghmc"])
    assert [Path(c["output"]).name for c in first.calls] == ["cls_loss=ghmc_seed0", "cls_loss=ghmc_seed1"]
    rows = list(csv.DictReader((tmp_path / "ablation.csv").open()))
    assert [r["run"] for r in rows] == ["cls_loss=ghmc_seed0", "cls_loss=ghmc_seed1"]
    summary = (tmp_path / "summary.md").read_text()
    assert "cls_loss=focal" in summary and "cls_loss=ghmc" in summary
    # the rest later, in the same folder: only what is missing
    rest = FakeTrain()
    monkeypatch.setattr(ablate_module, "train", rest)
    ablate(study, seeds=2, overrides=EPOCH, output=tmp_path, verbose=False)
    assert [Path(c["output"]).name for c in rest.calls] == ["cls_loss=focal_seed0", "cls_loss=focal_seed1"]
    with pytest.raises(ValueError, match=r"no such cell cls_loss=qfl \(cells of grid: cls_loss=focal, cls_loss=ghmc\)"):
        ablate(study, seeds=2, overrides=EPOCH, output=tmp_path, verbose=False, cells=["cls_loss=qfl"])


def test_a_schedule_fitted_to_time_is_flagged(tmp_path, monkeypatch):
    monkeypatch.setattr(ablate_module, "train", FakeTrain())
    with pytest.warns(UserWarning, match=r"2 of 2 cells fit their schedule to train.max_time"):
        ablate(grid_study("model.cls_loss=focal,ghmc"), 1, ["train.epochs=1"], output=tmp_path, verbose=False)


def test_a_diverged_run_is_recorded_and_the_others_go_on(tmp_path, monkeypatch):
    fake = FakeTrain(diverge={"cls_loss=ghmc_seed1"})
    monkeypatch.setattr(ablate_module, "train", fake)
    study = grid_study("model.cls_loss=focal,ghmc")
    out = ablate(study, seeds=2, overrides=EPOCH, output=tmp_path, verbose=False)
    assert len(fake.calls) == 4
    rows = {r["run"]: r for r in read_rows(plan_runs(study, 2, EPOCH, out))}
    assert rows["cls_loss=ghmc_seed1"]["status"] == "diverged" and math.isnan(rows["cls_loss=ghmc_seed1"]["AP"])
    assert "| cls_loss=ghmc | 1/2, 1 diverged | 0.200 |" in (out / "summary.md").read_text()
    rerun = FakeTrain()
    monkeypatch.setattr(ablate_module, "train", rerun)
    ablate(study, seeds=2, overrides=EPOCH, output=tmp_path, verbose=False)
    assert rerun.calls == []


class Killed(Exception):
    """The simulated kill of the ablation's process."""


class KillAfter(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, state):
        if state.step == self.step:
            raise Killed(f"killed after step {state.step}")


def test_a_killed_grid_resumes_where_it_stopped(tiny_data, tmp_path, monkeypatch):
    """Real tiny runs (3 steps an epoch, last.pt every 2): the ablation is killed in its second run after
    step 2; the rerun skips the finished run and resumes the killed one from its last.pt."""
    overrides = [f"data.dataset={tiny_data}", *TINY_RUN, "train.epochs=1", "train.checkpoint_interval=2"]
    study = grid_study("model.cls_loss=focal,alpha_ce")
    calls = []

    def killing_train(config, output=None, resume=None, callbacks=(), verbose=True):
        calls.append((Path(output).name if output else Path(resume).parent.parent.name, resume))
        extra = [KillAfter(2)] if output is not None and Path(output).name.startswith("cls_loss=alpha_ce") else []
        return real_train(config, output, resume, [*callbacks, *extra], verbose=False)

    monkeypatch.setattr(ablate_module, "train", killing_train)
    with pytest.raises(Killed):
        ablate(study, seeds=1, overrides=overrides, output=tmp_path, verbose=False)
    finished, killed = tmp_path / "cls_loss=focal_seed0", tmp_path / "cls_loss=alpha_ce_seed0"
    stamp = (finished / "metrics.json").stat().st_mtime_ns
    assert load_checkpoint(killed / "weights" / "last.pt")["step"] == 2 and not (killed / "metrics.json").exists()
    before = json.loads((killed / "ablate.json").read_text())["time"]

    calls.clear()
    ablate(study, seeds=1, overrides=overrides, output=tmp_path, verbose=False)
    assert calls == [("cls_loss=alpha_ce_seed0", killed / "weights" / "last.pt")]
    assert (finished / "metrics.json").stat().st_mtime_ns == stamp
    assert load_checkpoint(killed / "weights" / "last.pt")["step"] == 3
    record = json.loads((killed / "ablate.json").read_text())
    assert record["cell"] == "cls_loss=alpha_ce" and record["time"] > before

    rows = read_rows(plan_runs(study, 1, overrides, tmp_path))
    for row in rows:
        metrics = json.loads((tmp_path / row["run"] / "metrics.json").read_text())
        assert row["status"] == "finished"
        expected = [math.nan if metrics[k] is None else metrics[k] for k in METRIC_KEYS]
        assert [row[k] for k in METRIC_KEYS] == pytest.approx(expected, nan_ok=True)
    calls.clear()
    ablate(study, seeds=1, overrides=overrides, output=tmp_path, verbose=False)
    assert calls == []


def test_every_study_plans_its_papers_settings_on_one_schedule(tmp_path):
    """Every cell of a study builds, trains as many steps as the others (a schedule in epochs, not time),
    and gets the setting its paper uses."""
    for name, study in STUDIES.items():
        runs = plan_runs(study, 1, [], tmp_path / name)
        assert [r.cell.name for r in runs] == [c.name for c in study.cells]
        assert {c.better for c in study.claims} | {c.worse for c in study.claims} <= {c.name for c in study.cells}
        shared = {yaml.safe_dump({k: r.config[k] for k in ("data", "train")}) for r in runs}
        assert len(shared) == 1, name
        train = runs[0].config["train"]
        assert train["schedule"] == "epochs" and train["max_time"] is None
        digits = yaml.safe_load(Path(runs[0].config["data"]["dataset"]).read_text())
        steps = train["epochs"] * (digits["options"]["num_train"] // train["batch_size"])
        assert train["warmup_iters"] <= steps // 4 and train["milestones"] == [pytest.approx(0.8 * train["epochs"])]
        assert train["eval_interval"] == train["epochs"]  # one evaluation, at the end

    parts = {r.cell.name: build_remedies(r.config["model"]) for r in plan_runs(STUDIES["focal"], 1, [], tmp_path)}
    assert type(parts["CE"]["cls_loss"]) is BinaryCrossEntropyLoss and parts["CE"]["cls_loss"].alpha is None
    assert parts["alpha-CE"]["cls_loss"].alpha == 0.75  # focal paper, Table 1a: the best alpha-balanced CE
    # Table 1b: the best alpha for each gamma
    for cell, gamma, alpha in (("FL-gamma0.5", 0.5, 0.5), ("FL-gamma1", 1, 0.25), ("FL-gamma2", 2, 0.25)):
        loss = parts[cell]["cls_loss"]
        assert isinstance(loss, FocalLoss) and (loss.gamma, loss.alpha) == (gamma, alpha)
    assert (parts["FL-gamma5"]["cls_loss"].gamma, parts["FL-gamma5"]["cls_loss"].alpha) == (5, 0.25)
    assert all(parts[c]["sampler"] is None for c in ("CE", "alpha-CE", "FL-gamma2", "GHM-C"))
    # Table 1d's OHEM 1:3 (batch 128, NMS 0.5) and SSD's 3:1 mining, both with CE
    ohem, ssd = parts["OHEM-1to3"]["sampler"], parts["SSD-3to1"]["sampler"]
    assert isinstance(ohem, OHEMSampler) and (ohem.num, ohem.pos_fraction, ohem.neg_pos_ratio) == (128, 0.25, 3)
    assert ohem.nms_iou == 0.5 and ohem.mode == "ratio"
    assert isinstance(ssd, HardNegativeMiner) and ssd.neg_pos_ratio == 3
    assert all(type(parts[c]["cls_loss"]) is BinaryCrossEntropyLoss for c in ("OHEM-1to3", "SSD-3to1"))
    assert isinstance(parts["GHM-C"]["cls_loss"], GHMC)

    gfl = {r.cell.name: r.config["model"] for r in plan_runs(STUDIES["gfl"], 1, [], tmp_path)}
    assert (gfl["FL"]["cls_loss"], gfl["FL"]["dfl_weight"]) == ("focal", 0)
    assert (gfl["QFL"]["cls_loss"], gfl["QFL"]["dfl_weight"]) == ("qfl", 0)
    assert (gfl["QFL+DFL"]["cls_loss"], gfl["QFL+DFL"]["dfl_weight"]) == ("qfl", 0.25)  # GFL paper, sec. 4
    assert isinstance(build_remedies(gfl["QFL"])["cls_loss"], QualityFocalLoss)

    libra = {r.cell.name: r.config["model"] for r in plan_runs(STUDIES["libra"], 1, [], tmp_path)}
    assert libra["Faster-RCNN"]["sampler"] == "random" and libra["Libra-RCNN"]["sampler"] == "libra"
    assert libra["Libra-RCNN"]["bfp"] == "non_local" and libra["Libra-RCNN"]["box_loss"] == "balanced_l1"
    assert libra["OHEM"]["sampler"] == "ohem" and libra["A-Fast-RCNN"]["adversary"] == "asdn"


def test_epochs_lengthens_a_study_with_its_shape(tmp_path, monkeypatch):
    """``--epochs 6`` on the focal study: 750 steps, the decay at 4/5 (4.8 epochs) and the presets' 100
    warm-up steps, one evaluation at the end, in every cell; an error with a grid or a bad count."""
    given = []
    monkeypatch.setattr(ablate_module, "ablate", lambda study, *args: given.append(study) or tmp_path)
    assert cli_main(["ablate", "--study", "focal", "--seeds", "1", "--epochs", "6", "--output", str(tmp_path)]) == 0
    (study,) = given
    assert study.cells == STUDIES["focal"].cells and study.claims == STUDIES["focal"].claims
    for run in plan_runs(study, 1, [], tmp_path):
        train = run.config["train"]
        shape = (train["epochs"], train["milestones"], train["warmup_iters"], train["eval_interval"])
        assert shape == (6, [4.8], 100, 6)
    short = plan_runs(STUDIES["focal"], 1, [], tmp_path / "short")[0].config["train"]
    assert (short["epochs"], short["milestones"], short["warmup_iters"]) == (2, [1.6], 62)  # its own: 250 steps
    with pytest.raises(ValueError, match=r"--epochs sets a study's length"):
        run_ablation("retinanet_digits", ["model.cls_loss=focal,ghmc"], None, epochs=3, output=tmp_path / "g")
    with pytest.raises(ValueError, match=r"--epochs 0: expected a positive number"):
        run_ablation(None, [], "focal", epochs=0, output=tmp_path / "z")


def test_cli_ablate_errors_are_one_line(tmp_path, capsys, monkeypatch):
    fake = FakeTrain()
    monkeypatch.setattr(ablate_module, "train", fake)
    assert cli_main(["ablate", "--study", "nope"]) == 2
    assert "--study 'nope': no such study (studies: focal, gfl, libra)" in capsys.readouterr().err
    assert cli_main(["ablate", "--study", "focal", "--config", "gfl_digits"]) == 2
    assert "drop --config/--grid" in capsys.readouterr().err
    assert cli_main(["ablate", "--grid", "model.cls_loss=focal,ghmc"]) == 2
    assert "give --study NAME, or --config C" in capsys.readouterr().err
    out = str(tmp_path / "abl")
    assert cli_main(["ablate", "--config", "gfl_digits", "--grid", "model.sampler=ohem", "--output", out]) == 2
    assert "ablation cell 'sampler=ohem'" in capsys.readouterr().err
    assert fake.calls == []
    args = ["ablate", "--config", "retinanet_digits", "--grid", "model.cls_loss=focal,ghmc", "--seeds", "2"]
    assert cli_main([*args, *(a for o in EPOCH for a in ("--set", o)), "--output", out]) == 0
    assert [Path(c["output"]).name for c in fake.calls] == [
        "cls_loss=focal_seed0",
        "cls_loss=focal_seed1",
        "cls_loss=ghmc_seed0",
        "cls_loss=ghmc_seed1",
    ]
    assert "| 1 | cls_loss=focal | 2/2 | 0.400 ± 0.141 |" in capsys.readouterr().out


def test_cell_names_are_folder_names():
    for study in STUDIES.values():
        names = [c.name for c in study.cells]
        assert len(set(names)) == len(names)
        for cell in study.cells:
            assert all(ch.isalnum() or ch in "._+-" for ch in cell.name), cell.name
    with pytest.raises(ValueError, match="a cell name must be"):
        plan_runs(Study("s", "retinanet_digits", (Cell("a/b", ()),)), 1, [], Path("unused"))
