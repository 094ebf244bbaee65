"""The loss protocol of docs/conventions.md: every loss module is ``loss(pred, target, weight=None, avg_factor=None)``
and declares, as class attributes, what a detector must do differently for it."""

import inspect

import pytest
import torch
from torch import nn

import balancedet.losses as losses

N, C = 12, 3

# Every exported loss module, by role, with the attributes a detector reads.
CLASSIFICATION = {
    "FocalLoss": False,
    "FocalLossStar": False,
    "SoftmaxFocalLoss": False,
    "BinaryCrossEntropyLoss": False,
    "CrossEntropyLoss": False,
    "GHMC": False,
    "QualityFocalLoss": True,
}
BOX = {
    "SmoothL1Loss": False,
    "L1Loss": False,
    "BalancedL1Loss": False,
    "GHMR": False,
    "IoULoss": True,
    "GIoULoss": True,
}
OTHER = {"DistributionFocalLoss"}  # GFL's box-side distribution: neither role's targets
SELF_NORMALIZING = {"GHMC", "GHMR"}


def _exported_modules():
    return sorted(
        name for name in losses.__all__ if inspect.isclass(cls := getattr(losses, name)) and issubclass(cls, nn.Module)
    )


def test_every_exported_module_has_a_role():
    assert set(_exported_modules()) == set(CLASSIFICATION) | set(BOX) | OTHER


@pytest.mark.parametrize("name", _exported_modules())
def test_attributes(name):
    cls = getattr(losses, name)
    assert type(cls.self_normalizing) is bool and cls.self_normalizing == (name in SELF_NORMALIZING)
    if name in CLASSIFICATION:
        assert cls.needs_quality_targets is CLASSIFICATION[name]
        assert not hasattr(cls, "needs_decoded_boxes")
    elif name in BOX:
        assert cls.needs_decoded_boxes is BOX[name]
        assert not hasattr(cls, "needs_quality_targets")
    else:
        assert not hasattr(cls, "needs_decoded_boxes") and not hasattr(cls, "needs_quality_targets")


def _inputs(name):
    """``(pred, target)`` of the kind the module's attributes announce."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, C + 1, (N,), generator=gen)
    if name in ("SoftmaxFocalLoss", "CrossEntropyLoss"):
        return torch.randn(N, C + 1, generator=gen, dtype=torch.float64), labels  # background = column 0
    if name in CLASSIFICATION:
        logits = torch.randn(N, C, generator=gen, dtype=torch.float64)
        if CLASSIFICATION[name]:
            return logits, (labels, torch.rand(N, generator=gen, dtype=torch.float64))
        return logits, labels
    if name == "DistributionFocalLoss":
        return torch.randn(N, 17, generator=gen, dtype=torch.float64), torch.rand(N, generator=gen) * 16
    if BOX[name]:
        xy = torch.rand(N, 2, generator=gen, dtype=torch.float64) * 10
        boxes = torch.cat([xy, xy + 1 + torch.rand(N, 2, generator=gen, dtype=torch.float64) * 5], 1)
        return boxes, boxes + torch.rand(N, 4, generator=gen, dtype=torch.float64)
    return torch.randn(N, 4, generator=gen, dtype=torch.float64), torch.randn(N, 4, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("name", _exported_modules())
def test_called_as_pred_target_weight_avg_factor(name):
    make = getattr(losses, name)
    pred, target = _inputs(name)
    weight = torch.rand(N, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    values = {}
    for avg_factor in (2.0, 5.0):
        # A fresh module per call, so that a running state (GHM) is the same for both.
        values[avg_factor] = make()(pred, target, weight=weight, avg_factor=avg_factor)
        assert values[avg_factor].dim() == 0 and torch.isfinite(values[avg_factor])
    # avg_factor divides the weighted sum.
    torch.testing.assert_close(values[2.0] * 2.0, values[5.0] * 5.0)
    # weight multiplies: a zero weight (for GHM: no valid element) gives a zero loss.
    assert make()(pred, target, weight=torch.zeros_like(weight), avg_factor=2.0).item() == 0.0
