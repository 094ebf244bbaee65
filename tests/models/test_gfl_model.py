"""The GFL detector (Li et al., NeurIPS 2020, arXiv 2006.04388): head, decoding, losses, contract, overfit.

The loss reference below is written independently of ``GFLCriterion``: one image at a time, one positive
at a time, float64, each formula spelled out (QFL eq. 5, DFL eq. 6, GIoU, the expectation decode), and
the normalisers as the GFL reference implementation applies them.
"""

import math

import pytest
import torch
from torch import nn

from balancedet.assign import ATSSAssigner
from balancedet.boxes import box_iou
from balancedet.boxes.anchors import FPN_STRIDES
from balancedet.losses.focal import prior_bias
from balancedet.losses.gfl import QualityFocalLoss
from balancedet.losses.iou import GIoULoss
from balancedet.models import DenseHead, DensePostProcess, Scale, build_pyramid, distribution_expectation
from balancedet.models.backbones import ResNetBackbone
from balancedet.models.gfl import GFL

REG_MAX = 16
C = 3


def gfl_head(in_channels, num_levels=5, channels=32, num_convs=4, norm="gn", norm_groups=32):
    return DenseHead(in_channels, C, 1, 4 * (REG_MAX + 1), channels, num_convs, norm, 0.01, norm_groups, num_levels)


def tiny_gfl(
    fpn_channels=32,
    head_channels=32,
    num_convs=2,
    head_norm="gn",
    prior_prob=0.01,
    bfp=None,
    backbone_norm="frozen_bn",
    frozen_stages=1,
    backbone=18,
    **kwargs,
) -> GFL:
    trunk, neck = build_pyramid(
        backbone,
        FPN_STRIDES,
        extra_from="p5",
        norm=backbone_norm,
        frozen_stages=frozen_stages,
        channels=fpn_channels,
        bfp=bfp,
    )
    # 8 groups of 4 channels: GroupNorm refuses groups of one value, which one channel on a 1x1 P7 would be
    head = DenseHead(fpn_channels, C, 1, 4 * (REG_MAX + 1), head_channels, num_convs, head_norm, prior_prob, 8, 5)
    post = {k: kwargs.pop(k) for k in ("score_thresh", "max_detections", "nms_iou") if k in kwargs}
    return GFL(C, trunk, neck=neck, head=head, postprocess=DensePostProcess(**{"nms_iou": 0.6, **post}), **kwargs)


def targets_of(*boxes_and_labels):
    return [
        {"boxes": torch.tensor(b, dtype=torch.float64).reshape(-1, 4), "labels": torch.tensor(lab, dtype=torch.int64)}
        for b, lab in boxes_and_labels
    ]


TARGETS = (
    ([[4.0, 6.0, 30.0, 28.0], [20.0, 10.0, 60.0, 62.0]], [0, 2]),
    ([[8.0, 30.0, 44.0, 60.0]], [1]),
)


# ---- head ----------------------------------------------------------------------------------------


def test_head_output_shapes_and_layout():
    head = gfl_head(16, num_levels=2, channels=32, num_convs=2)
    feats = [torch.randn(2, 16, 8, 6), torch.randn(2, 16, 4, 3)]
    cls, reg = head(feats)
    assert [t.shape for t in cls] == [(2, 48, C), (2, 12, C)]
    assert [t.shape for t in reg] == [(2, 48, 4 * (REG_MAX + 1)), (2, 12, 4 * (REG_MAX + 1))]
    # location (i, j) of a level is row i * W + j of its output, as AnchorPoints orders the points
    raw = head.cls_logits(head.cls_tower(feats[0]))
    torch.testing.assert_close(cls[0][1, 2 * 6 + 5], raw[1, :, 2, 5])
    with pytest.raises(ValueError, match="1 levels for 2 per-level scales"):
        head(feats[:1])


def test_head_init_prior_bias_groupnorm_and_scales():
    head = gfl_head(32)
    torch.testing.assert_close(head.cls_logits.bias, torch.full((C,), prior_bias(0.01)))
    assert math.isclose(1 / (1 + math.exp(-prior_bias(0.01))), 0.01, rel_tol=1e-12)
    assert torch.all(head.reg_output.bias == 0)
    convs = [m for m in head.cls_tower if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(c.bias is None for c in convs)  # GroupNorm follows every conv
    assert sum(isinstance(m, nn.GroupNorm) for m in head.reg_tower) == 4
    assert abs(float(head.cls_logits.weight.detach().std()) - 0.01) < 0.002
    assert [float(s.scale.detach()) for s in head.scales] == [1.0] * 5
    # a near-zero input gives every (point, class) probability ~pi at the start
    cls, _ = head([torch.zeros(1, 32, 4, 4)] * 5)
    torch.testing.assert_close(torch.cat(cls, 1).sigmoid(), torch.full((1, 80, C), 0.01), atol=1e-3, rtol=0)

    plain = gfl_head(32, num_levels=1, channels=32, num_convs=2, norm=None)
    assert not any(isinstance(m, nn.GroupNorm) for m in plain.modules())
    assert all(m.bias is not None for m in plain.cls_tower if isinstance(m, nn.Conv2d))
    # 48 channels: gcd(32, 48) = 16 groups of 3 (the GroupNorm of the GFL head needs groups dividing them)
    assert [m.num_groups for m in gfl_head(32, channels=48).cls_tower if isinstance(m, nn.GroupNorm)] == [16] * 4
    with pytest.raises(ValueError, match="norm"):
        gfl_head(32, norm="batch")


def test_scale_multiplies_the_regression_output_per_level():
    head = gfl_head(8, num_levels=2, channels=32, num_convs=1)
    feats = [torch.randn(1, 8, 4, 4), torch.randn(1, 8, 2, 2)]
    _, before = head(feats)
    with torch.no_grad():
        head.scales[1].scale.fill_(2.5)
    _, after = head(feats)
    torch.testing.assert_close(after[0], before[0])
    torch.testing.assert_close(after[1], 2.5 * before[1])
    assert Scale(0.5)(torch.ones(3)).tolist() == [0.5, 0.5, 0.5]


# ---- the distribution and its expectation --------------------------------------------------------


def test_expectation_matches_an_independent_computation():
    logits = torch.randn(2, 5, 4 * (REG_MAX + 1), dtype=torch.float64) * 3
    got = distribution_expectation(logits, REG_MAX)
    assert got.shape == (2, 5, 4)
    for b in range(2):
        for a in range(5):
            for side in range(4):
                row = logits[b, a, side * (REG_MAX + 1) : (side + 1) * (REG_MAX + 1)].tolist()
                top = max(row)
                e = [math.exp(v - top) for v in row]
                expected = sum(i * v for i, v in enumerate(e)) / sum(e)
                assert math.isclose(float(got[b, a, side]), expected, rel_tol=1e-12, abs_tol=1e-12)


def test_expectation_limits_and_dtypes():
    uniform = torch.zeros(1, 4 * (REG_MAX + 1))
    torch.testing.assert_close(distribution_expectation(uniform, REG_MAX), torch.full((1, 4), REG_MAX / 2))
    peaked = torch.full((4, REG_MAX + 1), -1e4)
    peaked[torch.arange(4), torch.tensor([0, 3, 7, 16])] = 0.0
    got = distribution_expectation(peaked.reshape(1, -1), REG_MAX)
    torch.testing.assert_close(got, torch.tensor([[0.0, 3.0, 7.0, 16.0]]))
    assert distribution_expectation(uniform.bfloat16(), REG_MAX).dtype == torch.float32
    with pytest.raises(ValueError, match="4 \\* \\(reg_max \\+ 1\\)"):
        distribution_expectation(torch.zeros(2, 64), REG_MAX)


# ---- losses against an independent float64 reference -----------------------------------------------


def _giou(p, t):
    iw = max(0.0, min(p[2], t[2]) - max(p[0], t[0]))
    ih = max(0.0, min(p[3], t[3]) - max(p[1], t[1]))
    inter = iw * ih
    union = (p[2] - p[0]) * (p[3] - p[1]) + (t[2] - t[0]) * (t[3] - t[1]) - inter
    hull = (max(p[2], t[2]) - min(p[0], t[0])) * (max(p[3], t[3]) - min(p[1], t[1]))
    return inter / union, inter / union - (hull - union) / hull


def reference_losses(cls, reg, points, strides, targets, counts, octave_base_scale=8.0):
    # the ATSS anchors: squares of side octave_base_scale * stride centred on the points (ATSS, sec. 3)
    """``cls: (B, A, C)``, ``reg: (B, A, 68)`` float64 -> the three losses, image by image, positive by positive."""
    bins = REG_MAX + 1
    assigner = ATSSAssigner(topk=9)
    half = (strides * octave_base_scale / 2)[:, None]
    anchors = torch.cat((points - half, points + half), dim=1)
    qfl_sum, num_pos, dfl_sum, giou_sum, weight_sum = 0.0, 0, 0.0, 0.0, 0.0
    for b, target in enumerate(targets):
        boxes = target["boxes"].to(torch.float64)
        labels = target["labels"]
        matched = assigner(anchors, counts, boxes[None], labels[None], C).matched[0].tolist()
        s = cls[b].sigmoid()
        y = torch.zeros_like(s)
        for a, m in enumerate(matched):
            if m < 0:
                continue
            num_pos += 1
            stride = float(strides[a])
            px, py = float(points[a, 0]), float(points[a, 1])
            side_p = [torch.softmax(reg[b, a, k * bins : (k + 1) * bins], dim=0) for k in range(4)]
            d = [sum(i * side_p[k][i] for i in range(bins)) * stride for k in range(4)]
            pred = [px - d[0], py - d[1], px + d[2], py + d[3]]
            gt = boxes[m].tolist()
            iou, giou = _giou(pred, gt)
            y[a, int(labels[m])] = float(iou.detach())  # detached soft target
            w = float(s[a].max().detach())  # detached weight
            weight_sum += w
            giou_sum = giou_sum + w * (1 - giou)
            sides = [(px - gt[0]) / stride, (py - gt[1]) / stride, (gt[2] - px) / stride, (gt[3] - py) / stride]
            dfl = 0.0
            for k, t in enumerate(sides):
                t = min(max(t, 0.0), REG_MAX - 0.01)
                left = math.floor(t)
                dfl = dfl - ((left + 1 - t) * side_p[k][left].log() + (t - left) * side_p[k][left + 1].log())
            dfl_sum = dfl_sum + w * dfl / 4
        qfl_sum = qfl_sum + ((y - s).abs() ** 2 * -((1 - y) * torch.log(1 - s) + y * torch.log(s))).sum()
    return (
        {
            "loss_cls": qfl_sum / max(num_pos, 1),
            "loss_dfl": 0.25 * dfl_sum / max(weight_sum, 1.0),
            "loss_box": 2.0 * giou_sum / max(weight_sum, 1.0),
        },
        num_pos,
        weight_sum,
    )


def _double_model(**kwargs):
    model = tiny_gfl(prior_prob=0.4, **kwargs).double().train()
    with torch.no_grad():
        # peaked, varied distributions and scores, so that every term of the losses matters
        nn.init.normal_(model.head.reg_output.weight, std=0.3)
        nn.init.normal_(model.head.cls_logits.weight, std=0.3)
        for i, scale in enumerate(model.head.scales):
            scale.scale.fill_(1.0 + 0.1 * i)
    return model


def _head_outputs(model, images):
    feats = model.features(images)
    cls, reg = model.head(feats)
    priors = model.prior_generator([f.shape[-2:] for f in feats], images.device)
    # GFL's points: (j * s, i * s) of each location, row-major, level after level (point offset 0)
    points = torch.cat(
        [
            torch.stack(torch.meshgrid(torch.arange(f.shape[-2]), torch.arange(f.shape[-1]), indexing="ij")[::-1], -1)
            .reshape(-1, 2)
            .double()
            * s
            for f, s in zip(feats, (8, 16, 32, 64, 128), strict=True)
        ]
    )
    strides = torch.cat(
        [torch.full((f.shape[-2] * f.shape[-1],), float(s)) for f, s in zip(feats, (8, 16, 32, 64, 128), strict=True)]
    )
    torch.testing.assert_close(priors.points.double(), points)
    return torch.cat(cls, 1), torch.cat(reg, 1), points, strides.double(), [c.shape[1] for c in cls], priors


@pytest.mark.parametrize("with_empty_image", [False, True])
def test_training_losses_match_the_reference(with_empty_image):
    model = _double_model()
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    targets = targets_of(*TARGETS)
    if with_empty_image:
        targets[1] = {"boxes": torch.zeros(0, 4, dtype=torch.float64), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model(images, targets)
    assert set(losses) == {"loss_cls", "loss_dfl", "loss_box"}

    with torch.no_grad():
        cls, reg, points, strides, counts, _ = _head_outputs(model, images)
        expected, num_pos, weight_sum = reference_losses(cls, reg, points, strides, targets, counts)
    assert num_pos >= 4 and weight_sum > 1.0  # both normalisers are exercised above their clamp
    for name, value in expected.items():
        torch.testing.assert_close(losses[name], torch.as_tensor(value, dtype=torch.float64), rtol=1e-6, atol=1e-10)


def test_loss_gradients_match_the_reference():
    model = _double_model()
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    targets = targets_of(*TARGETS)
    with torch.no_grad():
        cls, reg, points, strides, counts, priors = _head_outputs(model, images)

    cls_a, reg_a = cls.clone().requires_grad_(), reg.clone().requires_grad_()
    got = model.criterion(cls_a, reg_a, priors, targets)
    cls_b, reg_b = cls.clone().requires_grad_(), reg.clone().requires_grad_()
    expected, _, _ = reference_losses(cls_b, reg_b, points, strides, targets, counts)
    for name in got:
        ga = torch.autograd.grad(got[name], (cls_a, reg_a), allow_unused=True, retain_graph=True)
        gb = torch.autograd.grad(expected[name], (cls_b, reg_b), allow_unused=True, retain_graph=True)
        for x, y, like in zip(ga, gb, (cls, reg), strict=True):
            x = torch.zeros_like(like) if x is None else x
            y = torch.zeros_like(like) if y is None else y
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-10, msg=name)


def test_loss_weights_scale_the_terms():
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    targets = targets_of(*TARGETS)
    torch.manual_seed(1)
    base = _double_model()(images, targets)
    torch.manual_seed(1)
    scaled = _double_model(
        cls_loss=QualityFocalLoss(loss_weight=3.0), dfl_weight=1.0, box_loss=GIoULoss(loss_weight=1.0)
    )(images, targets)
    torch.testing.assert_close(scaled["loss_cls"], 3 * base["loss_cls"])
    torch.testing.assert_close(scaled["loss_dfl"], 4 * base["loss_dfl"])
    torch.testing.assert_close(scaled["loss_box"], base["loss_box"] / 2)
    torch.manual_seed(1)
    assert "loss_dfl" not in _double_model(dfl_weight=0.0)(images, targets)


def test_batch_without_any_box_has_zero_box_losses_and_defined_gradients():
    model = tiny_gfl()
    images = torch.randn(2, 3, 64, 64)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model(images, [empty, empty])
    assert losses["loss_dfl"].item() == 0.0 and losses["loss_box"].item() == 0.0
    assert 0.0 < losses["loss_cls"].item() and torch.isfinite(losses["loss_cls"])
    sum(losses.values()).backward()
    # every head parameter takes part in the graph (no unused parameters under DDP)
    grad = model.head.reg_output.weight.grad
    assert grad is not None and torch.all(grad == 0)
    assert model.head.cls_logits.weight.grad.abs().sum() > 0


def test_training_needs_matching_targets():
    model = tiny_gfl()
    images = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match="one target per image \\(2\\), got None"):
        model(images)
    with pytest.raises(ValueError, match="one target per image \\(2\\), got 1"):
        model(images, targets_of(TARGETS[0]))


def test_construction_options():
    images = torch.randn(2, 3, 64, 64)
    targets = targets_of(*TARGETS)
    for model in (tiny_gfl(bfp="non_local", head_norm=None), GFL(C, ResNetBackbone(18))):
        losses = model.train()(images, targets)
        assert all(torch.isfinite(v) for v in losses.values())
    default = GFL(C, 18)
    assert default.neck.fpn.extra_from == "p5" and default.postprocess.nms_iou == 0.6
    assert sum(isinstance(m, nn.GroupNorm) for m in default.head.cls_tower) == 4 and len(default.head.scales) == 5
    with pytest.raises(ValueError, match="num_classes"):
        GFL(0, backbone=18)
    with pytest.raises(ValueError, match="strides"):
        GFL(C, 18, strides=(8, 16, 32, 64, 256))
    with pytest.raises(TypeError, match="backbone"):
        GFL(C, backbone="resnet18")
    with pytest.raises(ValueError, match=r"the head has \(num_classes, num_anchors, reg_width\) \(3, 1, 4\)"):
        GFL(C, 18, head=DenseHead(256, C, 1, 4))


# ---- evaluation contract ---------------------------------------------------------------------------


def test_eval_returns_detections_in_input_coordinates():
    model = tiny_gfl(score_thresh=0.001, max_detections=7, size_divisible=32).eval()
    with torch.no_grad():
        nn.init.normal_(model.head.cls_logits.weight, std=0.2)
    images = [torch.randn(3, 64, 80), torch.randn(3, 70, 64)]
    with torch.no_grad():
        out = model(images)
        batch = torch.zeros(2, 3, 96, 96)  # padded to multiples of 32
        batch[0, :, :64, :80], batch[1, :, :70, :64] = images
        cls = _head_outputs(model, batch)[0]
    assert len(out) == 2
    for det, (h, w), logits in zip(out, [(64, 80), (70, 64)], cls, strict=True):
        assert set(det) == {"boxes", "scores", "labels"}
        k = det["scores"].shape[0]
        assert 0 < k <= 7 and det["boxes"].shape == (k, 4) and det["labels"].shape == (k,)
        assert det["labels"].dtype == torch.int64 and det["labels"].min() >= 0 and det["labels"].max() < C
        assert torch.all(det["scores"][:-1] >= det["scores"][1:])
        boxes = det["boxes"]
        assert torch.all(boxes[:, 0] >= 0) and torch.all(boxes[:, 2] <= w) and torch.all(boxes[:, 3] <= h)
        assert torch.all(boxes[:, 2] >= boxes[:, 0]) and torch.all(boxes[:, 3] >= boxes[:, 1])
        # the best detection's score is the best joint sigmoid of the image (NMS never removes it)
        torch.testing.assert_close(det["scores"][0], logits.sigmoid().max())
    # a tensor batch is accepted as it is
    with torch.no_grad():
        assert len(model(torch.randn(1, 3, 64, 64))) == 1


def test_eval_boxes_are_the_expectation_times_the_stride():
    model = tiny_gfl(score_thresh=0.0, max_detections=1000, nms_iou=1.0).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        det = model(images)[0]
        cls, reg, points, strides, _, _ = _head_outputs(model, images)
    # one detection per (point, class): match the best one back to its point
    best = int(cls[0].max(dim=1).values.argmax())
    d = distribution_expectation(reg[0, best], REG_MAX) * strides[best]
    p = points[best]
    expected = torch.stack((p[0] - d[0], p[1] - d[1], p[0] + d[2], p[1] + d[3])).clamp(0, 64)
    torch.testing.assert_close(det["boxes"][0], expected.float())


# ---- it learns ---------------------------------------------------------------------------------------


def test_tiny_overfit():
    torch.manual_seed(0)
    # a frozen random trunk keeps the steps cheap; the FPN and the head learn
    model = tiny_gfl(backbone_norm="gn", frozen_stages=4).train()
    images = torch.randn(2, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[20.0, 16.0, 60.0, 44.0]]), "labels": torch.tensor([2])},
    ]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    totals = []
    for _ in range(25):
        losses = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    # The box losses are weighted by the predicted scores (~pi = 0.01 at the start) over a sum of weights
    # clamped at 1, so the loss first rises with the scores, then falls: compare with its peak.
    assert totals[-1] < 0.5 * max(totals), totals
    model.eval()
    with torch.no_grad():
        detections = model(images)
    for det, target in zip(detections, targets, strict=True):
        assert det["labels"][0] == target["labels"][0] and det["scores"][0] > 0.5
        assert float(box_iou(det["boxes"][:1], target["boxes"])) > 0.7
