import copy

import pytest
import torch
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import box_iou
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from balancedet.integrations import use_balancedet_loss
from balancedet.integrations.torchvision import TORCHVISION_BOX_BETA, BalancedRoIHeads, use_balancedet_roi_heads
from balancedet.losses import (
    BalancedL1Loss,
    FocalLoss,
    SmoothL1Loss,
    balanced_l1_loss,
    cross_entropy,
    sigmoid_focal_loss,
)
from balancedet.losses.ghm import GHMC
from balancedet.losses.smooth_l1 import smooth_l1_loss
from balancedet.samplers import OHEMSampler, RandomSampler, libra_sampler


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


# ---- torchvision's Faster R-CNN with balancedet RoI sampling and box losses --------------------------------

RCNN_LOSSES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


def _faster_rcnn(size=64):
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    return FasterRCNN(backbone, num_classes=5, min_size=size, max_size=size).train()


def _rcnn_data(size=64):
    images, targets = _data()
    scale = size / 64
    return [torch.rand(3, size, size) for _ in images], [{**t, "boxes": t["boxes"] * scale} for t in targets]


def _record_pooled(model):
    """A list that receives the boxes the RoI pooler pools at each call (per image, in order)."""
    seen = []
    model.roi_heads.box_roi_pool.register_forward_pre_hook(lambda _, args: seen.append([b.clone() for b in args[1]]))
    return seen


def _losses_and_grads(model, images, targets, seed=5):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    losses = model(images, targets)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith("roi_heads") and p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def test_torchvision_sampling_with_our_losses_reproduces_torchvision():
    # 96 px: more proposals than the 512 RoIs per image, so torchvision's sampler really draws at random;
    # sampler=None keeps its BalancedPositiveNegativeSampler (the same randperm calls): same seed, same RoIs.
    model = _faster_rcnn(96)
    images, targets = _rcnn_data(96)
    reference = copy.deepcopy(model)
    pooled = _record_pooled(reference)
    expected, expected_grads = _losses_and_grads(reference, images, targets)
    assert [b.shape[0] for b in pooled[0][:2]] == [512, 512]  # subsampled, not every proposal
    use_balancedet_roi_heads(model)
    assert isinstance(model.roi_heads, BalancedRoIHeads) and model.roi_heads.box_loss.beta == TORCHVISION_BOX_BETA
    ours, grads = _losses_and_grads(model, images, targets)
    assert set(ours) == set(RCNN_LOSSES)
    for key in RCNN_LOSSES:
        torch.testing.assert_close(ours[key], expected[key], rtol=1e-6, atol=1e-7)
    assert set(grads) == set(expected_grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-5, atol=1e-7)
    # the same modules: state-dict keys and tensors are the model's own
    assert model.state_dict().keys() == reference.state_dict().keys()


def test_our_random_sampler_reproduces_torchvision_when_every_roi_is_sampled():
    # Our RandomSampler draws one random key per RoI (torch.rand) where torchvision draws randperms, so the
    # two cannot pick the same random RoIs for a seed; with a budget above the RoI count both keep every
    # RoI (deterministic), and the losses and gradients must then be the same.
    model = _faster_rcnn()
    images, targets = _rcnn_data()
    reference = copy.deepcopy(model)
    reference.roi_heads.fg_bg_sampler = BalancedPositiveNegativeSampler(100_000, 0.5)
    expected, expected_grads = _losses_and_grads(reference, images, targets)
    use_balancedet_roi_heads(model, RandomSampler(100_000, 0.5), box_loss=SmoothL1Loss(beta=1 / 9))
    ours, grads = _losses_and_grads(model, images, targets)
    for key in RCNN_LOSSES:
        torch.testing.assert_close(ours[key], expected[key], rtol=1e-6, atol=1e-7)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-5, atol=1e-7)


def _constructed_case():
    """Fixed features and RoIs for one 64-px image with one box ``[16, 16, 48, 48]`` of class 2: 4 foreground
    RoIs (IoU >= 0.5) and the box itself, 3 hard negatives in each of the IoU bins [0.15, 0.3) and [0.3, 0.46),
    30 easy ones (IoU 0)."""
    torch.manual_seed(3)
    model = _faster_rcnn()
    heads = model.roi_heads
    with torch.no_grad():  # logits and deltas that differ from RoI to RoI, so the choice shows in the loss
        heads.box_predictor.cls_score.weight.mul_(300.0)
        heads.box_predictor.bbox_pred.weight.mul_(300.0)
    features = {str(i): torch.randn(1, 256, 64 >> (i + 2), 64 >> (i + 2)) for i in range(4)}
    gt = torch.tensor([[16.0, 16.0, 48.0, 48.0]])
    fg = torch.tensor([[18.0, 16, 48, 50], [14.0, 14, 46, 46], [16.0, 20, 50, 48], [17.0, 15, 47, 49]])
    # shifted copies of the box: IoU = (32 - d) / (32 + d) for a shift d along x
    shift = torch.tensor([12.0, 14.0, 16.0, 18.0, 20.0, 22.0])
    hard = gt.repeat(6, 1) + torch.stack([shift, torch.zeros(6), shift, torch.zeros(6)], 1)
    easy = torch.tensor([[0.0, 0.0, 8.0, 8.0]]) + torch.tensor([[0.0, 0.5, 0.0, 0.5]]) * torch.arange(30.0)[:, None]
    proposals = [torch.cat((fg, hard, easy))]
    targets = [{"boxes": gt, "labels": torch.tensor([2])}]
    return model, features, proposals, targets, hard


def _reference_per_roi(model, features, rois, targets):
    """Per-RoI ``(ce, box deltas, box targets, fg)`` from torchvision's own modules and matcher."""
    heads = model.roi_heads
    gt, label = targets[0]["boxes"], targets[0]["labels"]
    iou = box_iou(gt, rois)[0]
    fg = iou >= 0.5
    labels = torch.where(fg, label[0], 0)
    logits, deltas = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, [rois], [(64, 64)])))
    picked = deltas.reshape(len(rois), -1, 4)[torch.arange(len(rois)), labels]
    encoded = heads.box_coder.encode_single(gt.expand_as(rois), rois)
    return cross_entropy(logits, labels, reduction="none"), picked, encoded, fg


def test_libra_sampling_balances_the_negatives_over_iou_bins():
    model, features, proposals, targets, hard = _constructed_case()
    heads = model.roi_heads
    # 12 RoIs at a quarter foreground: 3 positives, 9 negatives = 3 per bin; the bins span the negatives'
    # IoU range [0, 0.45]: every hard negative is taken, and 3 easy ones (Libra R-CNN, eq. 2)
    use_balancedet_roi_heads(model, libra_sampler(12, 0.25))
    batch = model.roi_heads.match(proposals, targets)
    sample = model.roi_heads.sample(batch)
    rois = batch.boxes[0]
    taken_hard = sample.neg[0] & (batch.max_iou[0] > 0.15)
    assert int(sample.pos.sum()) == 3 and int(sample.neg.sum()) == 9
    assert int(taken_hard.sum()) == 6 and torch.equal(rois[taken_hard], hard)
    # the loss is the mean over exactly those 12 RoIs (the sampled count, as fastrcnn_loss divides)
    pooled = _record_pooled(model)
    losses = model.roi_heads(features, proposals, [(64, 64)], targets)[1]
    kept = pooled[0][0]
    assert kept.shape[0] == 12 and (box_iou(kept, hard).max(0).values == 1).all()
    ce, picked, encoded, fg = _reference_per_roi(model, features, kept, targets)
    torch.testing.assert_close(losses["loss_classifier"], ce.mean())
    box = smooth_l1_loss(picked[fg], encoded[fg], beta=TORCHVISION_BOX_BETA, reduction="sum") / 12
    torch.testing.assert_close(losses["loss_box_reg"], box)
    # torchvision's random draw of the same 9 negatives from 36 takes 1.5 hard ones on average
    torch.manual_seed(0)
    heads.fg_bg_sampler = BalancedPositiveNegativeSampler(12, 0.25)
    drawn = [heads.fg_bg_sampler([batch.labels[0]])[1][0].bool() & (batch.max_iou[0] > 0.15) for _ in range(200)]
    assert sum(int(d.sum()) for d in drawn) / 200 < 3


def test_ohem_keeps_the_hardest_rois_and_their_loss():
    model, features, proposals, targets, _ = _constructed_case()
    use_balancedet_roi_heads(model, OHEMSampler(8, mode="budget"))
    losses = model.roi_heads(features, proposals, [(64, 64)], targets)[1]
    rois = torch.cat((proposals[0], targets[0]["boxes"]))
    ce, picked, encoded, fg = _reference_per_roi(model, features, rois, targets)
    # OHEM sec. 4.1: rank by the multitask loss, CE + smooth L1 (beta 1) on the foreground
    rank_box = torch.where(fg, smooth_l1_loss(picked, encoded, beta=1.0, reduction="none").sum(-1), 0.0)
    hardest = (ce + rank_box).detach().topk(8).indices
    torch.testing.assert_close(losses["loss_classifier"], ce[hardest].mean())
    box = smooth_l1_loss(picked[hardest][fg[hardest]], encoded[hardest][fg[hardest]], beta=1 / 9, reduction="sum") / 8
    torch.testing.assert_close(losses["loss_box_reg"], box)
    assert losses["loss_classifier"] > ce.mean()  # the hard examples weigh more than the average RoI
    # the gradient is that of the 8 alone (the paper's second pass)
    weight = model.roi_heads.box_predictor.cls_score.weight
    model.zero_grad(set_to_none=True)
    losses["loss_classifier"].backward()
    ours = weight.grad.clone()
    model.zero_grad(set_to_none=True)
    _reference_per_roi(model, features, rois[hardest], targets)[0].mean().backward()
    torch.testing.assert_close(ours, weight.grad)


def test_balanced_l1_is_eq8_on_the_box_heads_deltas():
    model, features, proposals, targets, _ = _constructed_case()
    rois = torch.cat((proposals[0], targets[0]["boxes"]))
    every = RandomSampler(1000, 1.0)  # every RoI: a deterministic set
    use_balancedet_roi_heads(model, every, box_loss=SmoothL1Loss(beta=1 / 9))
    smooth = model.roi_heads(features, proposals, [(64, 64)], targets)[1]
    use_balancedet_roi_heads(model, every, box_loss=BalancedL1Loss())
    balanced = model.roi_heads(features, proposals, [(64, 64)], targets)[1]
    _, picked, encoded, fg = _reference_per_roi(model, features, rois, targets)
    # Libra R-CNN eq. 8 (alpha 0.5, gamma 1.5, beta 1) on the 5 foreground RoIs, divided by all 42 sampled
    expected = balanced_l1_loss(picked[fg], encoded[fg], alpha=0.5, gamma=1.5, beta=1.0, reduction="sum") / len(rois)
    torch.testing.assert_close(balanced["loss_box_reg"], expected)
    torch.testing.assert_close(balanced["loss_classifier"], smooth["loss_classifier"])  # only the box term changes
    assert not torch.allclose(balanced["loss_box_reg"], smooth["loss_box_reg"])


@pytest.mark.parametrize(
    "sampler",
    [libra_sampler(), OHEMSampler(64, mode="budget", nms_iou=0.7)],
    ids=["libra", "ohem"],
)
def test_a_patched_faster_rcnn_trains_and_predicts_as_before(sampler):
    model = _faster_rcnn()
    images, targets = _rcnn_data()
    model.eval()
    with torch.no_grad():
        before = model(images)
    use_balancedet_roi_heads(model.train(), sampler, box_loss=BalancedL1Loss())
    losses = model(images, targets)
    assert set(losses) == set(RCNN_LOSSES) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.box_predictor.bbox_pred.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        after = model(images)
    for a, b in zip(after, before, strict=True):
        torch.testing.assert_close(a["boxes"], b["boxes"])


def test_the_roi_heads_patch_rejects_other_models():
    with pytest.raises(TypeError, match="FasterRCNN"):
        use_balancedet_roi_heads(_model(), libra_sampler())
    model = _faster_rcnn()
    model.roi_heads.mask_roi_pool = model.roi_heads.box_roi_pool
    model.roi_heads.mask_head = model.roi_heads.mask_predictor = torch.nn.Identity()
    with pytest.raises(TypeError, match="no mask"):
        use_balancedet_roi_heads(model)
