"""The FPN RPN: P6 by max-pool, anchors per level, targets and losses against float64 loops written from
the papers' rules (Faster R-CNN arXiv 1506.01497 sec. 3.1; FPN arXiv 1612.03144 sec. 4.1), proposals
against a brute-force top-k / decode / clip / NMS reference."""

import math

import pytest
import torch
import torch.nn.functional as F

from balancedet.losses.cross_entropy import BinaryCrossEntropyLoss
from balancedet.losses.smooth_l1 import SmoothL1Loss
from balancedet.models.fpn import FPN
from balancedet.models.priors import PriorGenerator, Priors
from balancedet.models.pyramid import build_pyramid
from balancedet.models.rpn import (
    RPN,
    RPN_RATIOS,
    RPN_SIZES,
    RPN_STRIDES,
    RPNCriterion,
    RPNHead,
    sampled_losses,
)
from balancedet.samplers import RandomSampler
from tests.assign.references import iou, max_iou_assign

# ---- references, one anchor and one box at a time, in float64 --------------------------------------


def rpn_labels(anchors, boxes):
    """Faster R-CNN sec. 3.1.2: positive for (i) the anchors of highest IoU with a box, (ii) IoU > 0.7
    (>= 0.7, as Detectron) with any box; negative below 0.3 for all boxes; the rest ignored (-2). The
    assigners' float64 reference (tests/assign/references.py) implements exactly those rules."""
    return max_iou_assign(anchors, boxes, [0] * len(boxes), 1, 0.7, 0.3, 0.0, True)[0]


def deltas(anchor, box, stds=(1.0, 1.0, 1.0, 1.0)):
    """R-CNN parametrisation (Faster R-CNN eq. 2) of ``box`` relative to ``anchor``, divided by ``stds``."""
    wa, ha = anchor[2] - anchor[0], anchor[3] - anchor[1]
    xa, ya = anchor[0] + wa / 2, anchor[1] + ha / 2
    w, h = box[2] - box[0], box[3] - box[1]
    x, y = box[0] + w / 2, box[1] + h / 2
    t = ((x - xa) / wa, (y - ya) / ha, math.log(w / wa), math.log(h / ha))
    return [v / s for v, s in zip(t, stds, strict=True)]


def decode(anchor, d):
    wa, ha = anchor[2] - anchor[0], anchor[3] - anchor[1]
    xa, ya = anchor[0] + wa / 2, anchor[1] + ha / 2
    x, y = xa + d[0] * wa, ya + d[1] * ha
    clamp = math.log(1000 / 16)
    w, h = wa * math.exp(min(d[2], clamp)), ha * math.exp(min(d[3], clamp))
    return [x - w / 2, y - h / 2, x + w / 2, y + h / 2]


def greedy_nms(boxes, scores, threshold):
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    kept = []
    for i in order:
        if all(iou(boxes[i], boxes[k]) <= threshold for k in kept):
            kept.append(i)
    return kept


def smooth_l1(x, beta):
    x = abs(x)
    return 0.5 * x * x / beta if x < beta else x - 0.5 * beta


# ---- P6 and the anchors -------------------------------------------------------------------------------


def test_p6_is_a_stride_2_subsampling_of_p5():
    # FPN paper sec. 4.1: "P6 is simply a stride two subsampling of P5" (Detectron: max-pool, kernel 1, stride 2).
    fpn = FPN([8, 16, 24, 32], out_channels=8, num_extra=1, extra_from="maxpool", first_stride=4)
    feats = [torch.randn(2, c, -(-70 // s), -(-45 // s)) for c, s in zip((8, 16, 24, 32), (4, 8, 16, 32), strict=True)]
    outs = fpn(feats)
    assert fpn.strides == RPN_STRIDES and len(fpn.extra) == 0
    assert [tuple(o.shape[-2:]) for o in outs] == [(18, 12), (9, 6), (5, 3), (3, 2), (2, 1)]
    torch.testing.assert_close(outs[4], outs[3][..., ::2, ::2], rtol=0, atol=0)
    plain = FPN([8, 16, 24, 32], out_channels=8, num_extra=0, first_stride=4)
    plain.load_state_dict(fpn.state_dict())
    for a, b in zip(plain(feats), outs[:4], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_pyramid_reads_c2_to_c5_for_p2_to_p6():
    backbone, neck = build_pyramid(18, RPN_STRIDES, extra_from="maxpool", norm="bn", frozen_stages=-1, channels=8)
    assert backbone.levels == (2, 3, 4, 5) and neck.strides == RPN_STRIDES
    levels = neck(backbone(torch.randn(1, 3, 64, 96)))
    assert [tuple(f.shape) for f in levels] == [(1, 8, 16, 24), (1, 8, 8, 12), (1, 8, 4, 6), (1, 8, 2, 3), (1, 8, 1, 2)]


def test_anchors_one_scale_three_ratios_per_level():
    # FPN sec. 4.1: areas {32^2, ..., 512^2} on P2-P6 (side 8 x stride), ratios {1:2, 1:1, 2:1}.
    assert RPN_SIZES == tuple(8.0 * s for s in RPN_STRIDES) and RPN_RATIOS == (0.5, 1.0, 2.0)
    generator = PriorGenerator(RPN_SIZES, RPN_STRIDES, RPN_RATIOS)
    sizes = [(-(-64 // s), -(-48 // s)) for s in RPN_STRIDES]
    priors = generator(sizes, torch.device("cpu"))
    assert priors.num_per_level == tuple(h * w * 3 for h, w in sizes)
    for level, (anchors, stride) in enumerate(zip(priors.split(priors.anchors), RPN_STRIDES, strict=True)):
        height, width = sizes[level]
        side = 8.0 * stride
        for i in range(height):
            for j in range(width):
                for a, ratio in enumerate(RPN_RATIOS):
                    box = anchors[(i * width + j) * 3 + a].double().tolist()
                    w, h = box[2] - box[0], box[3] - box[1]
                    assert (box[0] + box[2]) / 2 == pytest.approx(j * stride, abs=1e-4)
                    assert (box[1] + box[3]) / 2 == pytest.approx(i * stride, abs=1e-4)
                    assert w * h == pytest.approx(side * side, rel=1e-5)
                    assert h / w == pytest.approx(ratio, rel=1e-5)
    assert (priors.split(priors.strides)[2] == 16).all()


def test_head_shapes_and_initialisation():
    torch.manual_seed(0)
    head = RPNHead(32, 3)
    objectness, reg = head([torch.randn(2, 32, 8, 6), torch.randn(2, 32, 4, 3)])
    assert [tuple(o.shape) for o in objectness] == [(2, 144, 1), (2, 36, 1)]
    assert [tuple(r.shape) for r in reg] == [(2, 144, 4), (2, 36, 4)]
    assert head.conv.kernel_size == (3, 3) and head.objectness.kernel_size == (1, 1)
    for conv in (head.conv, head.objectness, head.deltas):
        assert conv.weight.std().item() == pytest.approx(0.01, rel=0.2) and (conv.bias == 0).all()


# ---- targets, sampling, losses ----------------------------------------------------------------------------


def grid_priors():
    """Integer anchors (exact IoUs in float32 and float64): squares of side 8, 16, 24 on a 4-pixel grid."""
    boxes = [[x, y, x + side, y + side] for side in (8, 16, 24) for y in range(0, 48, 4) for x in range(0, 48, 4)]
    anchors = torch.tensor(boxes, dtype=torch.float32)
    return Priors(anchors, torch.full((len(boxes),), 4.0), (len(boxes),))


TARGETS = [
    {
        "boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0], [26.0, 10.0, 50.0, 30.0], [5.0, 30.0, 11.0, 37.0]]),
        "labels": torch.tensor([2, 0, 1]),
    },
    {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},
    {"boxes": torch.tensor([[13.0, 13.0, 31.0, 33.0]]), "labels": torch.tensor([1])},
]


def test_targets_match_the_papers_rules():
    priors = grid_priors()
    criterion = RPNCriterion()
    assign, target_boxes = criterion.match(priors, TARGETS)
    encoded = criterion.coding.encode(target_boxes, priors)
    anchors = priors.anchors.double().tolist()
    for b, target in enumerate(TARGETS):
        boxes = target["boxes"].double().tolist()
        expected = rpn_labels(anchors, boxes) if boxes else [-1] * len(anchors)
        assert assign.matched[b].tolist() == expected
        for a, m in enumerate(expected):
            if m >= 0:
                assert encoded[b, a].tolist() == pytest.approx(deltas(anchors[a], boxes[m]), abs=1e-5)
    assert (assign.matched[1] == -1).all()
    assert (assign.matched >= 0).sum() > 3 and (assign.matched == -2).any()


class Recording:
    """A sampler that remembers what the wrapped one returned."""

    def __init__(self, inner):
        self.inner, self.needs = inner, inner.needs

    def __call__(self, candidates):
        self.sample = self.inner(candidates)
        return self.sample


def test_sampling_quota_and_the_normalised_losses():
    torch.manual_seed(0)
    priors = grid_priors()
    num = priors.anchors.shape[0]
    objectness = torch.randn(3, num, 1, dtype=torch.float64)
    reg = 0.3 * torch.randn(3, num, 4, dtype=torch.float64)
    sampler = Recording(RandomSampler(256, 0.5))
    criterion = RPNCriterion(sampler=sampler)
    losses = criterion(objectness, reg, priors, TARGETS)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box"}
    pos, keep = sampler.sample.pos, sampler.sample.keep
    assign, _ = criterion.match(priors, TARGETS)
    anchors = priors.anchors.double().tolist()
    cls_sum = box_sum = 0.0
    for b, target in enumerate(TARGETS):
        boxes = target["boxes"].double().tolist()
        matched = rpn_labels(anchors, boxes) if boxes else [-1] * num
        positives = [a for a, m in enumerate(matched) if m >= 0]
        negatives = [a for a, m in enumerate(matched) if m == -1]
        # 256 per image, at most half positive (sec. 3.1.3), negatives fill the rest
        assert int(pos[b].sum()) == min(128, len(positives))
        assert int(keep[b].sum()) == min(256, int(pos[b].sum()) + len(negatives))
        assert set(torch.nonzero(keep[b]).flatten().tolist()) <= set(positives) | set(negatives)
        for a in torch.nonzero(keep[b]).flatten().tolist():
            p = 1 / (1 + math.exp(-objectness[b, a, 0].item()))
            cls_sum += -math.log(p) if matched[a] >= 0 else -math.log(1 - p)
            if matched[a] >= 0:
                t = deltas(anchors[a], boxes[matched[a]])
                box_sum += sum(smooth_l1(reg[b, a, k].item() - t[k], 1 / 9) for k in range(4))
    total = int(keep.sum())
    assert losses["loss_rpn_cls"].item() == pytest.approx(cls_sum / total, rel=1e-6)
    assert losses["loss_rpn_box"].item() == pytest.approx(box_sum / total, rel=1e-6)


def test_the_papers_settings():
    # Faster R-CNN sec. 3.1.2-3.1.3: IoU 0.7 / 0.3 with each box's best anchors, 256 anchors at half positive;
    # Detectron's FPN RPN: smooth L1 beta 1/9; detectron2's Base-RCNN-FPN: pre-NMS 2000 / 1000 per level,
    # post-NMS 1000 per image (Detectron's 2000 per 2-image batch), NMS 0.7.
    criterion = RPNCriterion()
    assigner = criterion.assigner
    assert (assigner.pos_iou, assigner.neg_iou, assigner.low_quality, assigner.min_pos_iou) == (0.7, 0.3, True, 0.0)
    assert (criterion.sampler.num, criterion.sampler.pos_fraction) == (256, 0.5)
    assert isinstance(criterion.cls_loss, BinaryCrossEntropyLoss) and criterion.cls_loss.alpha is None
    assert isinstance(criterion.box_loss, SmoothL1Loss) and criterion.box_loss.beta == pytest.approx(1 / 9)
    assert criterion.coding.coder.stds == (1.0, 1.0, 1.0, 1.0)
    rpn = RPN(RPNHead(8), PriorGenerator(RPN_SIZES, RPN_STRIDES, RPN_RATIOS))
    counts = (rpn.pre_nms_top_n_train, rpn.pre_nms_top_n_test, rpn.post_nms_top_n_train, rpn.post_nms_top_n_test)
    assert counts == (2000, 1000, 1000, 1000) and rpn.nms_iou == 0.7


# ---- proposals -----------------------------------------------------------------------------------------------


def reference_proposals(scores, regs, anchors_per_level, size, pre, post, nms_iou, min_size):
    """One image: per level the ``pre`` best anchors, decoded, clipped to ``size = (H, W)``, small boxes
    dropped, NMS within the level; the ``post`` best of all levels."""
    height, width = size
    survivors = []
    for level_scores, level_regs, anchors in zip(scores, regs, anchors_per_level, strict=True):
        order = sorted(range(len(level_scores)), key=lambda i: -level_scores[i])[:pre]
        boxes, kept_scores = [], []
        for i in order:
            x1, y1, x2, y2 = decode(anchors[i], level_regs[i])
            box = [min(max(x1, 0), width), min(max(y1, 0), height), min(max(x2, 0), width), min(max(y2, 0), height)]
            if box[2] - box[0] >= min_size and box[3] - box[1] >= min_size:
                boxes.append(box)
                kept_scores.append(level_scores[i])
        survivors += [(kept_scores[k], boxes[k]) for k in greedy_nms(boxes, kept_scores, nms_iou)]
    survivors.sort(key=lambda s: -s[0])
    return [box for _, box in survivors[:post]]


@pytest.mark.parametrize("training", [True, False])
def test_proposals_match_a_brute_force_reference(training):
    torch.manual_seed(3)
    generator = PriorGenerator((16.0, 32.0), (4, 8), RPN_RATIOS)
    feature_sizes = [(8, 8), (4, 4)]
    priors = generator(feature_sizes, torch.device("cpu"))
    rpn = RPN(RPNHead(4), generator, None, 20, 12, 15, 9, nms_iou=0.7).train(training)
    image_sizes = [(30, 32), (32, 20)]
    objectness = [torch.randn(2, n, 1) for n in priors.num_per_level]
    reg = [0.5 * torch.randn(2, n, 4) for n in priors.num_per_level]
    proposals = rpn.proposals(objectness, reg, priors, image_sizes)
    pre, post = (20, 15) if training else (12, 9)
    anchors = [a.double().tolist() for a in priors.split(priors.anchors)]
    for b, size in enumerate(image_sizes):
        expected = reference_proposals(
            [o[b, :, 0].tolist() for o in objectness],
            [r[b].double().tolist() for r in reg],
            anchors,
            size,
            pre,
            post,
            0.7,
            1e-3,
        )
        assert len(expected) > 5
        torch.testing.assert_close(
            proposals[b].double(), torch.tensor(expected, dtype=torch.float64), atol=1e-4, rtol=0
        )
        assert not proposals[b].requires_grad


def test_training_returns_losses_and_eval_none():
    torch.manual_seed(0)
    generator = PriorGenerator((16.0, 32.0), (4, 8), RPN_RATIOS)
    rpn = RPN(RPNHead(4), generator, None, 50, 30, 40, 20)
    levels = [torch.randn(2, 4, 8, 8, requires_grad=True), torch.randn(2, 4, 4, 4)]
    targets = [
        {"boxes": torch.tensor([[2.0, 3.0, 20.0, 25.0]]), "labels": torch.tensor([4])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},
    ]
    proposals, losses = rpn(levels, [(32, 32), (32, 32)], targets)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box"} and all(torch.isfinite(v) for v in losses.values())
    assert all(p.shape[0] <= 40 and p.shape[1] == 4 for p in proposals)
    sum(losses.values()).backward()
    assert levels[0].grad.abs().sum() > 0 and rpn.head.deltas.weight.grad.abs().sum() > 0
    rpn.eval()
    proposals, losses = rpn(levels, [(32, 32), (32, 32)])
    assert losses == {} and all(p.shape[0] <= 20 for p in proposals)


def test_bad_arguments():
    generator = PriorGenerator(RPN_SIZES, RPN_STRIDES, RPN_RATIOS)
    with pytest.raises(ValueError, match="anchors per location"):
        RPN(RPNHead(8, num_anchors=9), generator)
    with pytest.raises(ValueError, match="top-n counts"):
        RPN(RPNHead(8), generator, pre_nms_top_n_train=0)
    with pytest.raises(ValueError, match="training needs one target per image"):
        RPN(RPNHead(4), PriorGenerator((16.0,), (4,), RPN_RATIOS))([torch.randn(1, 4, 4, 4)], [(16, 16)])
    with pytest.raises(ValueError, match="extra_from"):
        FPN([16], extra_from="pool")


def test_max_pool_p6_keeps_odd_sizes():
    x = torch.randn(1, 2, 5, 3)
    assert tuple(F.max_pool2d(x, 1, 2).shape[-2:]) == (3, 2)


@pytest.mark.parametrize("num_pos", [0, 1, 5])
def test_sampled_losses_equal_the_detectron_normalisation_with_its_gradients(num_pos):
    """Classification BCE over the kept rows and smooth L1 (beta 1/9) summed over the positives' deltas,
    both divided by the number kept (torchvision's ``RegionProposalNetwork.compute_loss``), written here
    row by row in float64; the gradients of the gathered form (positives only) equal the reference's,
    zero on every row that is not a positive, also when no row is positive."""
    g = torch.Generator().manual_seed(num_pos)
    n = 12
    logits = torch.randn(n, 1, generator=g, requires_grad=True)
    pred = torch.randn(n, 4, generator=g, requires_grad=True)
    target = torch.randn(n, 4, generator=g)
    keep = torch.zeros(n, dtype=torch.bool)
    keep[:8] = True
    pos = torch.zeros(n, dtype=torch.bool)
    pos[:num_pos] = True
    labels = (~pos).long()  # 0 = object (the first of one class), 1 = background, as RPNCriterion
    loss_cls, loss_box = sampled_losses(
        BinaryCrossEntropyLoss(), SmoothL1Loss(beta=1 / 9), logits, labels, pred, target, pos, keep
    )
    (loss_cls + loss_box).backward()

    x, p = logits.detach().double().requires_grad_(), pred.detach().double().requires_grad_()
    kept = int(keep.sum())
    cls_terms, box_terms = [], []
    for i in range(n):
        if keep[i]:
            y = 1.0 if pos[i] else 0.0
            cls_terms.append(F.binary_cross_entropy_with_logits(x[i, 0], torch.tensor(y, dtype=torch.float64)))
        if pos[i]:
            for j in range(4):
                d = (p[i, j] - target[i, j].double()).abs()
                box_terms.append(torch.where(d < 1 / 9, 0.5 * d**2 * 9, d - 0.5 / 9))
    ref_cls = sum(cls_terms) / kept
    ref_box = sum(box_terms) / kept if box_terms else p.sum() * 0.0
    (ref_cls + ref_box).backward()
    torch.testing.assert_close(loss_cls.double(), ref_cls, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_box.double(), ref_box.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits.grad.double(), x.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pred.grad.double(), p.grad, rtol=1e-5, atol=1e-6)
    assert (pred.grad[~pos] == 0).all()
