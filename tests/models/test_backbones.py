import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from balancedet.models.backbones import ResNetBackbone


@pytest.mark.parametrize("norm", ["frozen_bn", "bn", "gn", "sync_bn"])
def test_resnet18_returns_c3_c4_c5(norm):
    backbone = ResNetBackbone(18, norm=norm)
    feats = backbone(torch.randn(2, 3, 64, 96))
    assert backbone.out_channels == [128, 256, 512]
    assert [tuple(f.shape) for f in feats] == [(2, 128, 8, 12), (2, 256, 4, 6), (2, 512, 2, 3)]


def test_sizes_round_up_like_strided_convs():
    feats = ResNetBackbone(18, norm="bn")(torch.randn(1, 3, 70, 33))
    assert [tuple(f.shape[-2:]) for f in feats] == [(9, 5), (5, 3), (3, 2)]


def test_resnet50_channels_and_norm_layers():
    backbone = ResNetBackbone(50)
    assert backbone.out_channels == [512, 1024, 2048]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    assert not hasattr(backbone, "fc")


@pytest.mark.parametrize("frozen_stages", [-1, 0, 1, 2])
def test_frozen_stages_get_no_gradient_and_keep_their_statistics(frozen_stages):
    backbone = ResNetBackbone(18, norm="bn", frozen_stages=frozen_stages)
    backbone.train()
    stem_frozen = frozen_stages >= 0
    assert all(p.requires_grad != stem_frozen for p in [*backbone.conv1.parameters(), *backbone.bn1.parameters()])
    assert all(p.requires_grad != (frozen_stages >= 1) for p in backbone.layer1.parameters())
    assert all(p.requires_grad != (frozen_stages >= 2) for p in backbone.layer2.parameters())
    assert all(p.requires_grad for p in backbone.layer4.parameters())
    assert backbone.bn1.training != stem_frozen
    before = backbone.bn1.running_mean.clone()
    backbone(torch.randn(2, 3, 32, 32))
    assert torch.equal(before, backbone.bn1.running_mean) == stem_frozen


def test_loads_a_local_torchvision_checkpoint(tmp_path):
    net = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": net.state_dict()}, path)
    backbone = ResNetBackbone(18, weights=str(path), norm="frozen_bn")
    assert torch.equal(backbone.layer3[0].conv1.weight, net.layer3[0].conv1.weight)
    assert torch.equal(backbone.bn1.running_var, net.bn1.running_var)
    gn = ResNetBackbone(18, weights=str(path), norm="gn")
    assert torch.equal(gn.bn1.weight, net.bn1.weight)


def test_bad_arguments_name_the_value(tmp_path):
    with pytest.raises(ValueError, match="depth"):
        ResNetBackbone(20)
    with pytest.raises(ValueError, match="norm"):
        ResNetBackbone(18, norm="ln")
    with pytest.raises(ValueError, match="NOT_A_WEIGHT"):
        ResNetBackbone(18, weights="NOT_A_WEIGHT")
    path = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="resnet18"):
        ResNetBackbone(18, weights=str(path))
