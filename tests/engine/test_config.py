import pytest

from balancedet.engine.config import DEFAULTS, find_preset, load_config, parse_override
from balancedet.engine.data import epoch_batches
from balancedet.engine.runtime import increment_dir
from balancedet.engine.train import learning_rate


def test_every_preset_loads_and_only_uses_known_keys():
    for name in ("retinanet_digits", "gfl_digits", "retinanet_r50_fpn", "gfl_r50"):
        config = load_config(name)
        assert set(config) == set(DEFAULTS)
        assert config["model"]["type"] in ("retinanet", "gfl")


def test_overrides_parse_yaml_values():
    config = load_config("retinanet_digits", ["train.epochs=3", "train.milestones=[1, 2]", "model.sampler=ohem"])
    assert config["train"]["epochs"] == 3 and config["train"]["milestones"] == [1, 2]
    assert config["model"]["sampler"] == "ohem"
    assert parse_override("train.grad_clip=null") == ("train", "grad_clip", None)
    assert parse_override("train.lr=1e-3")[2] == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "unknown key train.epoch"),
        ("training.epochs=3", "unknown section 'training'"),
        ("epochs=3", "section.key"),
        ("train.epochs", "expected section.key=value"),
    ],
)
def test_typos_are_errors_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("retinanet_digits", [override])


def test_unknown_preset_lists_the_presets(tmp_path):
    with pytest.raises(ValueError, match="retinanet_digits"):
        find_preset("no_such_preset")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  cls_los: focal\n")
    with pytest.raises(ValueError, match=r"bad.yaml: model.cls_los not used by model type .retinanet."):
        load_config(str(bad))


def test_learning_rate_warms_up_linearly_then_steps_down():
    # 4 epochs of 100 steps, decays after epochs 2 and 3 (Detectron's step schedule)
    cfg = {"lr": 0.1, "warmup_iters": 10, "warmup_factor": 0.001, "milestones": [2, 3], "lr_decay": 0.1}
    cfg |= {"epochs": 4, "schedule": "epochs"}
    assert learning_rate(0, cfg, 400) == pytest.approx(1e-4)
    assert learning_rate(5, cfg, 400) == pytest.approx(0.1 * (0.001 * 0.5 + 0.5))
    assert learning_rate(10, cfg, 400) == pytest.approx(0.1)
    assert learning_rate(199, cfg, 400) == pytest.approx(0.1)
    assert learning_rate(200, cfg, 400) == pytest.approx(0.01)
    assert learning_rate(300, cfg, 400) == pytest.approx(0.001)


def test_a_schedule_fitted_to_time_keeps_its_shape_at_any_length():
    # 5 "epochs", decay at 4: at 80% of whatever number of steps the budget allows; the warm-up is
    # at most a quarter of the run
    cfg = {"lr": 0.1, "warmup_iters": 100, "warmup_factor": 0.001, "milestones": [4], "lr_decay": 0.1}
    cfg |= {"epochs": 5, "schedule": "time"}
    assert learning_rate(399, cfg, 500) == pytest.approx(0.1)
    assert learning_rate(400, cfg, 500) == pytest.approx(0.01)
    assert learning_rate(79, cfg, 100) == pytest.approx(0.1)
    assert learning_rate(80, cfg, 100) == pytest.approx(0.01)
    assert learning_rate(5, cfg, 40) == pytest.approx(0.1 * (0.001 * 0.5 + 0.5))  # warm-up of 10 steps
    assert learning_rate(50, cfg, 2000) == pytest.approx(0.1 * (0.001 * 0.5 + 0.5))  # of 100 steps


def test_epoch_batches_are_a_function_of_seed_and_epoch():
    a = epoch_batches(10, 3, seed=0, epoch=1)
    assert a == epoch_batches(10, 3, seed=0, epoch=1)
    assert a != epoch_batches(10, 3, seed=0, epoch=2)
    assert [len(b) for b in a] == [3, 3, 3]  # the partial batch is dropped
    flat = [i for b in a for _, i in b]
    assert len(set(flat)) == 9 and all(e == 1 for b in a for e, _ in b)
    assert epoch_batches(2, 3, seed=0, epoch=0)[0].__len__() == 2  # a single short batch is kept


def test_increment_dir_never_reuses_a_folder(tmp_path):
    first = increment_dir(tmp_path / "exp")
    assert first == tmp_path / "exp"
    first.mkdir()
    second = increment_dir(tmp_path / "exp")
    assert second == tmp_path / "exp2"
    second.mkdir()
    assert increment_dir(tmp_path / "exp") == tmp_path / "exp3"


def test_numbers_written_without_a_dot_are_numbers_and_words_are_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  weight_decay: 1e-4\n  epochs: '3'\n")
    config = load_config(str(path))
    assert config["train"]["weight_decay"] == pytest.approx(1e-4) and config["train"]["epochs"] == 3
    with pytest.raises(ValueError, match="train.lr: expected a number, got 'fast'"):
        load_config("retinanet_digits", ["train.lr=fast"])
