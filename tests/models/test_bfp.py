import pytest
import torch
import torch.nn.functional as F

from balancedet.models.bfp import BalancedFeaturePyramid, NonLocal2d


def _levels(batch=2, channels=8):
    return [torch.randn(batch, channels, s, s + 1) for s in (16, 8, 4, 2, 1)]


@pytest.mark.parametrize("refine", ["non_local", "conv", "none"])
def test_output_shapes_match_the_input(refine):
    feats = _levels()
    outs = BalancedFeaturePyramid(8, 5, 1, refine)(feats)
    assert [o.shape for o in outs] == [f.shape for f in feats]


def test_integration_is_the_mean_of_resized_levels_added_back():
    feats = _levels()
    outs = BalancedFeaturePyramid(8, 5, refine_level=1, refine="none")(feats)
    size = feats[1].shape[-2:]
    gathered = [F.adaptive_max_pool2d(feats[0], size)] + [F.interpolate(f, size=size) for f in feats[1:]]
    mean = sum(gathered) / 5
    torch.testing.assert_close(outs[0], feats[0] + F.interpolate(mean, size=feats[0].shape[-2:]))
    torch.testing.assert_close(outs[1], feats[1] + mean)
    torch.testing.assert_close(outs[3], feats[3] + F.adaptive_max_pool2d(mean, feats[3].shape[-2:]))


def test_non_local_block_starts_as_identity_and_attends_everywhere():
    block = NonLocal2d(8)
    x = torch.randn(2, 8, 5, 6)
    torch.testing.assert_close(block(x), x)
    torch.nn.init.normal_(block.out.weight)
    x.requires_grad_(True)
    block(x)[0, :, 0, 0].sum().backward()
    assert (x.grad[0].abs().sum(0) > 0).all()  # one output position depends on every input position
    assert (x.grad[1] == 0).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="refine"):
        BalancedFeaturePyramid(refine="gcb")
    with pytest.raises(ValueError, match="refine_level"):
        BalancedFeaturePyramid(num_levels=3, refine_level=3)
    with pytest.raises(ValueError, match="expected 5"):
        BalancedFeaturePyramid(8)(_levels()[:4])
