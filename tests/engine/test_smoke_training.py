"""A short real training on a small built-in split must learn to detect digits (issue 4's smoke test).

About 1.5 minutes on the 2-core CI machine: 64 px scenes with one or two large digits, a narrow
RetinaNet from scratch, AdamW. The assertion is a real bar, far above what an untrained or broken
model scores (AP 0 for the prior-initialised head), far below what the run reaches.
"""

import pytest

from balancedet.engine.config import load_config
from balancedet.engine.train import train
from tests.conftest import digits_yaml


@pytest.fixture(scope="module")
def small_digits(tmp_path_factory):
    options = "{num_train: 400, num_val: 48, image_size: 64, objects: [1, 2], object_size: [24, 44],"
    options += " distractors: [0, 2]}"
    return digits_yaml(tmp_path_factory.mktemp("smoke"), "smoke", options)


def test_short_training_reaches_a_non_trivial_ap(small_digits, tmp_path):
    config = load_config(
        "retinanet_digits",
        [
            f"data.dataset={small_digits}",
            "data.min_size=64",
            "model.anchor_sizes=[16, 32, 64, 128, 256]",
            "train.epochs=8",
            "train.batch_size=16",
            "train.warmup_iters=30",
            "train.milestones=[7]",
            "train.eval_interval=8",
            "train.schedule=epochs",
            "train.max_time=null",
        ],
    )
    result = train(config, output=tmp_path / "smoke", verbose=False)
    # This run reaches AP 0.094, AP50 0.151 (torch 2.14.1, CPU); an untrained head scores 0.
    assert result["metrics"]["AP50"] > 0.05, result["metrics"]
    assert result["metrics"]["AP"] > 0.03, result["metrics"]
