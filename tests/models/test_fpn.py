import pytest
import torch
import torch.nn.functional as F

from balancedet.models.fpn import FPN


def _feats(batch=2, size=(64, 96), channels=(16, 24, 32)):
    h, w = size
    return [torch.randn(batch, c, -(-h // s), -(-w // s)) for c, s in zip(channels, (8, 16, 32), strict=True)]


def test_levels_p3_to_p7_with_their_strides():
    fpn = FPN([16, 24, 32], out_channels=8)
    outs = fpn(_feats())
    assert fpn.strides == (8, 16, 32, 64, 128)
    assert [tuple(o.shape) for o in outs] == [(2, 8, 8, 12), (2, 8, 4, 6), (2, 8, 2, 3), (2, 8, 1, 2), (2, 8, 1, 1)]


def test_sizes_that_are_not_multiples_of_32():
    outs = FPN([16, 24, 32], out_channels=8)(_feats(size=(70, 33)))
    assert [tuple(o.shape[-2:]) for o in outs] == [(9, 5), (5, 3), (3, 2), (2, 1), (1, 1)]


def test_extra_levels_follow_the_paper():
    fpn = FPN([16, 24, 32], out_channels=8)
    feats = _feats()
    outs = fpn(feats)
    p6 = fpn.extra[0](feats[-1])
    torch.testing.assert_close(outs[3], p6)
    torch.testing.assert_close(outs[4], fpn.extra[1](F.relu(p6)))
    top = fpn.lateral[2](feats[2])
    p4 = fpn.output[1](fpn.lateral[1](feats[1]) + F.interpolate(top, size=feats[1].shape[-2:], mode="nearest"))
    torch.testing.assert_close(outs[1], p4)


def test_p6_from_p5_and_no_extra_levels():
    fpn = FPN([16, 24, 32], out_channels=8, extra_from="p5")
    assert fpn.extra[0].in_channels == 8
    assert len(fpn(_feats())) == 5
    plain = FPN([16, 24, 32], out_channels=8, num_extra=0)
    assert plain.strides == (8, 16, 32) and len(plain(_feats())) == 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="extra_from"):
        FPN([16], extra_from="c4")
    with pytest.raises(ValueError, match="expected 3"):
        FPN([16, 24, 32])(_feats()[:2])
