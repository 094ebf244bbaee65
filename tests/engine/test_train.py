"""The trainer end to end on tiny built-in splits: outputs, exact resume, eval and predict."""

import json

import pytest
import torch

from balancedet.cli import main as cli_main
from balancedet.data import load_data_spec
from balancedet.engine.checkpoint import load_checkpoint
from balancedet.engine.config import load_config
from balancedet.engine.train import StopTraining, train

TINY_MODEL = [
    "model.backbone=18",
    "model.norm=bn",
    "model.frozen_stages=0",
    "model.fpn_channels=16",
    "model.head_channels=16",
    "model.num_convs=1",
    "model.anchor_sizes=[8, 16, 32, 64, 128]",
    "data.min_size=64",
    "data.max_size=null",
    "train.workers=0",
    "train.warmup_iters=2",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    path = root / "tiny.yaml"
    path.write_text(
        "format: digits\n"
        f"path: {root / 'cache'}\n"
        "options: {num_train: 24, num_val: 8, image_size: 64, objects: [1, 3], object_size: [14, 32]}\n"
    )
    return str(path)


def _config(data, *extra):
    return load_config("retinanet_digits", [f"data.dataset={data}", *TINY_MODEL, *extra])


def test_resume_after_a_kill_reproduces_the_uninterrupted_weights(tiny_data, tmp_path):
    config = _config(
        tiny_data,
        "train.epochs=2",
        "train.batch_size=8",
        "train.checkpoint_interval=2",
        "train.milestones=[1]",
        "model.cls_loss=ghmc",
        "model.normalizer_momentum=0.9",
    )
    full = train(config, output=tmp_path / "full", verbose=False)
    with pytest.raises(StopTraining):
        train(config, output=tmp_path / "killed", stop_after_steps=5, verbose=False)
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


def test_run_folder_holds_what_ultralytics_users_expect(tiny_data, tmp_path):
    config = _config(tiny_data, "train.epochs=1", "train.batch_size=8")
    out = train(config, output=tmp_path / "run", verbose=False)["output"]
    for name in (
        "args.yaml",
        "results.csv",
        "results.png",
        "PR_curve.png",
        "confusion_matrix.png",
        "val_batch0_pred.jpg",
        "metrics.json",
        "weights/best.pt",
        "weights/last.pt",
    ):
        assert (out / name).is_file(), name
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


def test_bad_input_gives_one_clear_line(tmp_path, capsys):
    assert cli_main(["train", "--set", "train.epoch=1"]) == 2
    assert "unknown key train.epoch" in capsys.readouterr().err
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt: no such file" in capsys.readouterr().err
    assert cli_main(["train", "--data", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
