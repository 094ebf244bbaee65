import pytest
import torch
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from balancedet.integrations import use_balancedet_loss
from balancedet.losses import FocalLoss, sigmoid_focal_loss
from balancedet.losses.ghm import GHMC


def _model():
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18",
        weights=None,
        trainable_layers=5,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(512, 256),
    )
    return RetinaNet(backbone, num_classes=4, min_size=64, max_size=64).train()


def _data():
    torch.manual_seed(1)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0], [5.0, 5.0, 60.0, 30.0]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[20.0, 20.0, 50.0, 40.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    return images, targets


@pytest.mark.parametrize("loss", [FocalLoss(), sigmoid_focal_loss], ids=["module", "function"])
def test_our_focal_loss_reproduces_torchvision(loss):
    model = _model()
    images, targets = _data()
    reference = model(images, targets)["classification"]
    use_balancedet_loss(model, loss)
    ours = model(images, targets)
    torch.testing.assert_close(ours["classification"], reference, rtol=1e-5, atol=1e-6)
    sum(ours.values()).backward()
    assert torch.isfinite(model.head.classification_head.cls_logits.weight.grad).all()


def test_batch_normalisation_and_ghmc_train():
    model = _model()
    images, targets = _data()
    use_balancedet_loss(model, FocalLoss(), normalization="batch")
    assert torch.isfinite(model(images, targets)["classification"])
    ghmc = GHMC()
    use_balancedet_loss(model, ghmc)
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert torch.isfinite(losses["classification"]) and ghmc.num_updates.item() == 1
    assert "head.classification_head.balancedet_loss.running_count" in model.state_dict()


def test_rejects_other_models():
    with pytest.raises(TypeError, match="RetinaNet"):
        use_balancedet_loss(torch.nn.Linear(2, 2), FocalLoss())
    with pytest.raises(ValueError, match="normalization"):
        use_balancedet_loss(_model(), FocalLoss(), normalization="gpu")
