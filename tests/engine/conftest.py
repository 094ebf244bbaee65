"""Tiny runs for the engine tests: on ``tiny_data`` (tests/conftest.py: 24 training and 8 validation
digits scenes of 64 px), a narrow ResNet-18 RetinaNet; a run of 3 steps an epoch takes a few seconds on
the CPU."""

import pytest

from balancedet.engine.config import load_config

TINY_RUN = [
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
    "train.batch_size=8",
    # the presets fit their schedule to a 570 s budget; the tiny runs count epochs
    "train.schedule=epochs",
    "train.max_time=null",
]


@pytest.fixture
def tiny_config(tiny_data):
    """``tiny_config("train.epochs=2", ...)``: the tiny run's configuration with more overrides."""

    def make(*overrides: str) -> dict:
        return load_config("retinanet_digits", [f"data.dataset={tiny_data}", *TINY_RUN, *overrides])

    return make
