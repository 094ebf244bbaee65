"""The RoI head: FPN eq. 1 level mapping by hand, RoI targets against a float64 reference, each RoI
sampler's contract (random quota, OHEM's hardest after NMS, Libra's bins and instance quota, S-OHEM),
OHEM's two passes (gradient only through the selected RoIs, the same loss and gradient as one masked
pass), the feature transform in both paths, and Fast R-CNN inference."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from balancedet.losses.cross_entropy import CrossEntropyLoss
from balancedet.losses.smooth_l1 import SmoothL1Loss
from balancedet.models.roi_head import ROI_STDS, BoxHead, FastRCNNCriterion, RoIHead
from balancedet.samplers import OHEM_SCHEDULE, OHEMSampler, RandomSampler, SOHEMSampler, libra_sampler
from tests.assign.references import iou
from tests.models.test_rpn import deltas, greedy_nms, smooth_l1

NUM_CLASSES = 3


def target(boxes, labels):
    return {"boxes": torch.as_tensor(boxes, dtype=torch.float32), "labels": torch.as_tensor(labels, dtype=torch.int64)}


# ---- pooling: FPN eq. 1 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [10, 56, 111, 112, 150, 223, 224, 300, 447, 448, 449, 700, 1000])
def test_level_of_a_roi_follows_fpn_eq_1(side):
    torch.manual_seed(0)
    head = RoIHead(BoxHead(2, NUM_CLASSES, 7, 8), FastRCNNCriterion(NUM_CLASSES))
    levels = [torch.randn(1, 2, 1024 // s, 1024 // s) for s in (4, 8, 16, 32)]
    box = [8.0, 16.0, 8.0 + side, 16.0 + side / 2]
    # eq. 1: k = floor(k0 + log2(sqrt(wh) / 224)), k0 = 4, clamped to P2-P5
    k = min(max(math.floor(4 + math.log2(math.sqrt(side * side / 2) / 224)), 2), 5)
    pooled = head.pool(levels, [torch.tensor([box])], (1024, 1024))
    expected = roi_align(levels[k - 2], [torch.tensor([box])], 7, spatial_scale=2.0**-k, sampling_ratio=2)
    # the sparse products sum in another order than torchvision's loop (float32 rounding); another level's
    # features differ by O(1)
    torch.testing.assert_close(pooled, expected, rtol=1e-6, atol=1e-6)


def test_level_boundaries_by_hand():
    # sqrt(wh) = 112 -> P3, 224 -> P4, 448 -> P5, 111 -> P2 (floor of 4 + log2(111/224) = 2.98)
    head = RoIHead(BoxHead(1, NUM_CLASSES, 7, 8), FastRCNNCriterion(NUM_CLASSES))
    levels = [
        torch.full((1, 1, 1024 // s, 1024 // s), float(k)) for k, s in zip((2, 3, 4, 5), (4, 8, 16, 32), strict=True)
    ]
    boxes = torch.tensor([[0.0, 0.0, 112, 112], [0, 0, 224, 224], [0, 0, 448, 448], [0, 0, 111, 111], [0, 0, 4, 4]])
    pooled = head.pool(levels, [boxes], (1024, 1024))
    assert pooled[:, 0, 3, 3].tolist() == [3.0, 4.0, 5.0, 2.0, 2.0]


def test_box_head_shapes_and_initialisation():
    torch.manual_seed(0)
    head = BoxHead(16, NUM_CLASSES, 7, 1024)
    logits, reg = head(torch.randn(5, 16, 7, 7))
    assert logits.shape == (5, NUM_CLASSES + 1) and reg.shape == (5, NUM_CLASSES, 4)
    assert head.fc1.in_features == 16 * 49 and head.fc2.out_features == 1024
    assert head.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert head.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert all((fc.bias == 0).all() for fc in (head.fc1, head.fc2, head.cls_score, head.bbox_pred))


# ---- targets ---------------------------------------------------------------------------------------------------


def reference_roi_targets(rois, boxes, labels):
    """Fast R-CNN sec. 2.3 with Detectron's thresholds: foreground at IoU >= 0.5 (its best box's class + 1),
    background below; no low-quality matches. ``(matched, labels, deltas / stds)``."""
    matched, out_labels, targets = [], [], []
    for roi in rois:
        row = [iou(roi, b) for b in boxes]
        best = max(row, default=0.0)
        if best >= 0.5:
            j = row.index(best)
            matched.append(j)
            out_labels.append(labels[j] + 1)
            targets.append(deltas(roi, boxes[j], ROI_STDS))
        else:
            matched.append(-1)
            out_labels.append(0)
            targets.append(None)
    return matched, out_labels, targets


def test_roi_targets_match_a_brute_force_reference():
    torch.manual_seed(0)
    proposals = [
        torch.randint(0, 40, (30, 2)).float().repeat(1, 2)
        + torch.tensor([0.0, 0.0, 1.0, 1.0]) * torch.randint(4, 30, (30, 1)),
        torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 30.0]]),
        torch.tensor([[1.0, 1.0, 20.0, 20.0]]),
    ]
    targets = [
        target([[4, 4, 24, 24], [30, 10, 60, 40], [5, 5, 5, 9]], [2, 0, 1]),  # the last one is degenerate
        target(torch.zeros((0, 4)), []),
        target([[0, 0, 20, 20]], [1]),
    ]
    criterion = FastRCNNCriterion(NUM_CLASSES)
    with pytest.warns(UserWarning, match="dropped ground-truth boxes"):
        roi = criterion.match(proposals, targets)
    for b, (props, t) in enumerate(zip(proposals, targets, strict=True)):
        boxes = t["boxes"].double().tolist()
        good = [i for i, box in enumerate(boxes) if box[2] > box[0] and box[3] > box[1]]
        rois = props.double().tolist() + [boxes[i] for i in good]  # ground truth added to the proposals
        n = len(rois)
        assert roi.boxes[b, :n].double().tolist() == rois
        matched, labels, expected = reference_roi_targets(
            rois, [boxes[i] for i in good], [t["labels"][i].item() for i in good]
        )
        assert roi.matched[b, :n].tolist() == [good[m] if m >= 0 else m for m in matched]
        assert roi.labels[b, :n].tolist() == labels
        assert (roi.matched[b, n:] == -2).all() and not roi.valid[b, n:].any()
        encoded = criterion.coder.encode(roi.boxes[b, :n], roi.target_boxes[b, :n])
        for i, e in enumerate(expected):
            if e is not None:
                assert encoded[i].tolist() == pytest.approx(e, abs=1e-5)
    assert (roi.labels[1] == 0).all() and (roi.matched[0] >= 0).sum() >= 2


def test_the_papers_settings():
    # Fast R-CNN / Detectron FPN: 512 RoIs at 25 % foreground, IoU 0.5, CE + smooth L1 (beta 1) on targets
    # scaled by stds (0.1, 0.1, 0.2, 0.2); inference score 0.05, class-wise NMS 0.5, 100 per image.
    criterion = FastRCNNCriterion(NUM_CLASSES)
    assert isinstance(criterion.sampler, RandomSampler)
    assert (criterion.sampler.num, criterion.sampler.pos_fraction) == (512, 0.25)
    assigner = criterion.assigner
    assert (assigner.pos_iou, assigner.neg_iou, assigner.low_quality) == (0.5, 0.5, False)
    assert isinstance(criterion.cls_loss, CrossEntropyLoss)
    assert isinstance(criterion.box_loss, SmoothL1Loss) and criterion.box_loss.beta == 1.0
    assert criterion.coder.stds == (0.1, 0.1, 0.2, 0.2) and criterion.add_gt_as_proposals
    head = RoIHead(BoxHead(8, NUM_CLASSES), criterion)
    assert (head.score_thresh, head.nms_iou, head.max_detections, head.num_levels) == (0.05, 0.5, 100, 4)
    assert head.pooler.output_size == 7 and head.pooler.sampling_ratio == 2 and head.pooler.kernel == "auto"


# ---- samplers ----------------------------------------------------------------------------------------------------


def crowd(num_pos, num_neg, box=(0.0, 0.0, 100.0, 100.0)):
    """RoIs ``(x1, y1, x2, y2 + h)`` around ``box``: ``num_pos`` at IoU >= 0.5, ``num_neg`` below."""
    x1, y1, x2, y2 = box
    pos = [[x1, y1, x2, y1 + (y2 - y1) * (0.6 + 0.4 * (i % 10) / 10)] for i in range(num_pos)]
    neg = [[x1, y1, x2, y1 + (y2 - y1) * (0.02 + 0.4 * (i % 20) / 20)] for i in range(num_neg)]
    return torch.tensor(pos + neg)


def test_random_sampler_keeps_its_quota():
    torch.manual_seed(0)
    criterion = FastRCNNCriterion(NUM_CLASSES)
    proposals = [crowd(300, 700), crowd(9, 900)]
    targets = [target([[0, 0, 100, 100]], [1]), target([[0, 0, 100, 100]], [2])]
    roi = criterion.match(proposals, targets)
    sample = criterion.sample(roi)
    # 512 per image, at most 128 foreground (with the ground truth itself: 10 in the second image)
    assert sample.pos.sum(1).tolist() == [128, 10] and sample.neg.sum(1).tolist() == [384, 502]
    assert not (sample.pos & sample.neg).any() and not (sample.keep & ~roi.valid).any()
    assert (roi.matched[sample.pos] >= 0).all() and (roi.matched[sample.neg] == -1).all()


def reference_ohem(rois, matched, labels, targets, logits, reg, budget, nms_iou):
    """OHEM sec. 4.1: each RoI's loss (CE + smooth L1 at its class, 0 for background), NMS at ``nms_iou`` by
    loss among the RoIs, the ``budget`` of highest loss."""
    losses = []
    for i in range(len(rois)):
        row = logits[i]
        ce = math.log(sum(math.exp(v) for v in row)) - row[labels[i]]
        box = 0.0
        if matched[i] >= 0:
            pred = reg[i][labels[i] - 1]
            box = sum(smooth_l1(p - t, 1.0) for p, t in zip(pred, targets[i], strict=True))
        losses.append(ce + box)
    kept = (
        greedy_nms(rois, losses, nms_iou) if nms_iou is not None else sorted(range(len(rois)), key=lambda i: -losses[i])
    )
    return set(kept[:budget])


def ohem_case():
    torch.manual_seed(1)
    proposals = [torch.randint(0, 50, (60, 2)).float().repeat(1, 2) + torch.tensor([0.0, 0, 1, 1]) * 20] * 2
    proposals[1] = proposals[1][:40] + 3
    targets = [target([[10, 10, 30, 30], [40, 40, 70, 70]], [0, 2]), target([[20, 10, 40, 30]], [1])]
    return proposals, targets


@pytest.mark.parametrize("nms_iou", [0.7, None])
def test_ohem_keeps_the_hardest_rois_after_nms(nms_iou):
    proposals, targets = ohem_case()
    criterion = FastRCNNCriterion(NUM_CLASSES, sampler=OHEMSampler(16, mode="budget", nms_iou=nms_iou))
    roi = criterion.match(proposals, targets)
    rows = roi.valid
    n = int(rows.sum())
    logits = 2 * torch.randn(n, NUM_CLASSES + 1, dtype=torch.float64)
    reg = torch.randn(n, NUM_CLASSES, 4, dtype=torch.float64)
    sample = criterion.sample(roi, rows, logits, reg)
    start = 0
    for b in range(2):
        count = int(rows[b].sum())
        matched = roi.matched[b, :count].tolist()
        rois = roi.boxes[b, :count].double().tolist()
        encoded = criterion.coder.encode(roi.boxes[b, :count], roi.target_boxes[b, :count]).double().tolist()
        expected = reference_ohem(
            rois,
            matched,
            roi.labels[b, :count].tolist(),
            encoded,
            logits[start : start + count].tolist(),
            reg[start : start + count].tolist(),
            16,
            nms_iou,
        )
        assert set(torch.nonzero(sample.keep[b]).flatten().tolist()) == expected
        assert int(sample.keep[b].sum()) == 16
        start += count


def test_ohem_gradient_flows_only_through_the_selected_rois():
    torch.manual_seed(2)
    proposals, targets = ohem_case()
    criterion = FastRCNNCriterion(NUM_CLASSES, sampler=OHEMSampler(16, mode="budget", nms_iou=0.7))
    head = BoxHead(4, NUM_CLASSES, 7, 32)
    roi = criterion.match(proposals, targets)
    rows = roi.valid
    pooled = torch.randn(int(rows.sum()), 4, 7, 7, requires_grad=True)
    logits, reg = head(pooled)
    sample = criterion.sample(roi, rows, logits, reg)
    losses = criterion(logits, reg, roi, sample, rows)
    sum(losses.values()).backward()
    selected = sample.keep[rows]
    grad = pooled.grad.flatten(1).abs().sum(1)
    assert int(selected.sum()) == 32 and (sample.pos[rows] & selected).any()
    assert (grad[~selected] == 0).all() and (grad[selected] > 0).all()


INPUT = (128, 128)


def ohem_head(seed=3, num=16):
    """A RoI head on 4-channel levels with OHEM (``num`` per image, NMS 0.7), and its levels for a 128-px batch.
    The predictor's weights are widened from N(0, 0.01) / N(0, 0.001) so that the RoIs' losses are far apart
    (no near-ties for the float64 reference to order differently)."""
    torch.manual_seed(seed)
    head = RoIHead(
        BoxHead(4, NUM_CLASSES, 7, 32),
        FastRCNNCriterion(NUM_CLASSES, sampler=OHEMSampler(num, mode="budget", nms_iou=0.7)),
    )
    torch.nn.init.normal_(head.box_head.cls_score.weight, std=0.5)
    torch.nn.init.normal_(head.box_head.bbox_pred.weight, std=0.5)
    levels = [torch.randn(2, 4, INPUT[0] // s, INPUT[1] // s, requires_grad=True) for s in (4, 8, 16, 32)]
    return head.train(), levels


class Calls:
    """Records each call of the box head: its input, its outputs, and whether it ran with gradient."""

    def __init__(self, module):
        self.inputs, self.outputs, self.grad = [], [], []
        module.register_forward_hook(self)

    def __call__(self, module, args, outputs):
        self.inputs.append(args[0])
        self.outputs.append(outputs)
        self.grad.append(torch.is_grad_enabled())


def test_ohem_ranks_every_roi_without_gradient_then_trains_the_selected_only():
    proposals, targets = ohem_case()
    head, levels = ohem_head()
    calls = Calls(head.box_head)
    pooled_calls = []
    pool = head.pool

    def recording_pool(lv, boxes, size):
        pooled_calls.append((boxes, pool(lv, boxes, size)))
        return pooled_calls[-1][1]

    head.pool = recording_pool
    losses = head(levels, proposals, [INPUT] * 2, INPUT, targets)
    roi = head.criterion.match(proposals, targets)
    valid = roi.valid
    # pass 1 (OHEM sec. 4, the read-only network): every valid RoI, no graph
    assert len(calls.inputs) == 2 and calls.grad == [False, True]
    assert calls.inputs[0].shape[0] == int(valid.sum()) and not calls.outputs[0][0].requires_grad
    # the selected RoIs are the highest-loss ones after NMS at 0.7, per image, from pass 1's outputs
    logits, reg = calls.outputs[0]
    start, chosen = 0, []
    for b in range(2):
        count = int(valid[b].sum())
        encoded = head.criterion.coder.encode(roi.boxes[b, :count], roi.target_boxes[b, :count]).double().tolist()
        expected = reference_ohem(
            roi.boxes[b, :count].double().tolist(),
            roi.matched[b, :count].tolist(),
            roi.labels[b, :count].tolist(),
            encoded,
            logits[start : start + count].double().tolist(),
            reg[start : start + count].double().tolist(),
            16,
            0.7,
        )
        chosen.append(sorted(expected))
        start += count
    # pass 2: only those RoIs are pooled (again) and go forward and backward through the head
    train_boxes, train_pooled = pooled_calls[1]
    assert [b.tolist() for b in train_boxes] == [roi.boxes[b, chosen[b]].tolist() for b in range(2)]
    assert calls.inputs[1] is train_pooled and train_pooled.shape[0] == 32 and train_pooled.requires_grad
    assert not pooled_calls[0][1].requires_grad
    train_pooled.retain_grad()
    sum(losses.values()).backward()
    assert (train_pooled.grad.flatten(1).abs().sum(1) > 0).all()
    assert levels[0].grad.abs().sum() > 0  # the case's RoIs (20-30 px) all pool from P2


def masked_one_pass(head, levels, proposals, targets):
    """The masked single pass OHEM used to run, written out: every valid RoI through the head with gradient,
    CE over the kept RoIs and smooth L1 (beta 1) over the kept foreground, both divided by the number kept."""
    roi = head.criterion.match(proposals, targets)
    rows = roi.valid
    pooled = head.pool(levels, [b[r] for b, r in zip(roi.boxes, rows, strict=True)], INPUT)
    logits, reg = head.box_head(pooled)
    sample = head.criterion.sample(roi, rows, logits, reg)
    keep, pos = sample.keep[rows].float(), sample.pos[rows].float()
    labels = roi.labels[rows]
    picked = reg[torch.arange(len(labels)), (labels - 1).clamp(min=0)]
    encoded = head.criterion.coder.encode(roi.boxes[rows], roi.target_boxes[rows])
    box = F.smooth_l1_loss(picked, encoded, beta=1.0, reduction="none").sum(1)
    num = keep.sum()
    loss_cls = (F.cross_entropy(logits, labels, reduction="none") * keep).sum() / num
    return {"loss_cls": loss_cls, "loss_box": (box * pos).sum() / num}, sample


def test_ohem_two_passes_give_the_masked_single_pass_loss_and_gradient():
    proposals, targets = ohem_case()
    head, levels = ohem_head()
    losses = head(levels, proposals, [INPUT] * 2, INPUT, targets)
    params = [levels[0], levels[1], *head.box_head.parameters()]
    got = torch.autograd.grad(sum(losses.values()), params)
    reference, sample = masked_one_pass(head, levels, proposals, targets)
    assert int(sample.keep.sum()) == 32 and sample.pos.any()
    for key in ("loss_cls", "loss_box"):
        torch.testing.assert_close(losses[key], reference[key], rtol=1e-5, atol=1e-6)
    expected = torch.autograd.grad(sum(reference.values()), params)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sampler", ["random", "ohem"])
def test_the_feature_transform_sees_the_rois_that_train(sampler):
    # A-Fast-RCNN's hook: applied to the features the head trains on; OHEM ranks on the features as pooled
    proposals, targets = ohem_case()
    head, levels = ohem_head()
    if sampler == "random":
        head.criterion.sampler = RandomSampler(16, 0.25)
    seen = []

    def transform(pooled, roi_targets, rows):
        seen.append((pooled.detach().clone(), rows.clone()))
        return 2 * pooled, {"loss_extra": pooled.sum() * 0}

    head.feature_transform = transform
    calls = Calls(head.box_head)
    losses = head(levels, proposals, [INPUT] * 2, INPUT, targets)
    assert set(losses) == {"loss_cls", "loss_box", "loss_extra"} and len(seen) == 1
    pooled, rows = seen[0]
    assert int(rows.sum()) == pooled.shape[0] == 32
    torch.testing.assert_close(calls.inputs[-1], 2 * pooled)
    if sampler == "ohem":
        # the selection pass saw every valid RoI untransformed; the transform got the selected ones
        roi = head.criterion.match(proposals, targets)
        everything = calls.inputs[0]
        assert everything.shape[0] == int(roi.valid.sum())
        torch.testing.assert_close(everything[rows[roi.valid]], pooled)


def test_sohem_with_the_ohem_schedule_is_ohem_without_nms():
    proposals, targets = ohem_case()
    ohem = FastRCNNCriterion(NUM_CLASSES, sampler=OHEMSampler(16, mode="budget"))
    sohem = FastRCNNCriterion(NUM_CLASSES, sampler=SOHEMSampler(16, schedule=OHEM_SCHEDULE))
    roi = ohem.match(proposals, targets)
    rows = roi.valid
    logits, reg = torch.randn(int(rows.sum()), NUM_CLASSES + 1), torch.randn(int(rows.sum()), NUM_CLASSES, 4)
    a, b = ohem.sample(roi, rows, logits, reg), sohem.sample(roi, rows, logits, reg)
    assert torch.equal(a.pos, b.pos) and torch.equal(a.neg, b.neg) and b.keep.sum(1).tolist() == [16, 16]
    with pytest.raises(ValueError, match="needs the head's outputs"):
        sohem.sample(roi)
    with pytest.raises(TypeError, match="schedule"):
        SOHEMSampler(64)


def test_libra_fills_the_iou_bins_and_balances_the_instances():
    torch.manual_seed(0)
    # one box (0, 0, 100, 100); negatives (0, 0, 100, h) have IoU h / 100: bins over their own range
    # [0.01, 0.49] are [0.01, 0.17), [0.17, 0.33), [0.33, 0.49]; heights 17 and 33 (the edges) are avoided
    low = [1] + [2 + i % 14 for i in range(199)]  # 200 in bin 0
    middle = [18 + i % 14 for i in range(100)]  # 100 in bin 1
    high = [35 + i % 14 for i in range(9)] + [49]  # 10 in bin 2
    negatives = [[0.0, 0.0, 100.0, float(h)] for h in low + middle + high]
    # box A (0..100) has 30 foreground proposals, box B (200..260) 5, plus each box itself
    pos_a = [[0.0, 0.0, 100.0, 60.0 + i] for i in range(30)]
    pos_b = [[200.0, 200.0, 260.0, 230.0 + i] for i in range(5)]
    proposals = [torch.tensor(negatives + pos_a + pos_b)]
    targets = [target([[0, 0, 100, 100], [200, 200, 260, 260]], [0, 1])]
    criterion = FastRCNNCriterion(NUM_CLASSES, sampler=libra_sampler(num=64, pos_fraction=0.25))
    roi = criterion.match(proposals, targets)
    sample = criterion.sample(roi)
    # instance-balanced positives: 16 wanted, 8 per box; box B has only 6 (its 5 and itself): A gives 10
    pos = roi.matched[0][sample.pos[0]]
    assert (pos == 0).sum() == 10 and (pos == 1).sum() == 6
    # IoU-balanced negatives: 48 wanted, 16 per bin; bin 2 has 10, the missing 6 come from bins 0 and 1
    heights = roi.boxes[0, :, 3][sample.neg[0]]
    bins = [int(((heights > 0) & (heights < 17)).sum()), int(((heights > 17) & (heights < 33)).sum())]
    assert int((heights > 33).sum()) == 10 and sum(bins) == 38 and min(bins) >= 16
    assert int(sample.keep.sum()) == 64


# ---- inference ------------------------------------------------------------------------------------------------------


def test_detections_score_threshold_classwise_nms_and_the_cap():
    head = RoIHead(BoxHead(1, 2), FastRCNNCriterion(2), max_detections=3)
    rois = [
        torch.tensor([[10.0, 10.0, 30.0, 30.0], [11.0, 10.0, 31.0, 30.0], [-5.0, 50.0, 20.0, 70.0], [40, 0, 60, 9]]),
        torch.tensor([[0.0, 0.0, 8.0, 8.0]]),
    ]
    # columns: background, class 0, class 1 (softmax; background at 0)
    logits = torch.tensor(
        [
            [0.0, 6.0, 6.0],  # class 0 and class 1 at 0.4988 each
            [0.0, 5.0, -9.0],  # class 0 at 0.9932: suppresses RoI 0's class 0 (IoU 0.90), not its class 1
            [0.0, -9.0, 6.0],  # class 1 at 0.9975
            [0.0, 1.0, 0.0],  # class 0 at 0.576 but over the cap of 3; class 1 at 0.21
            [6.0, -9.0, -9.0],  # background: nothing above 0.05
        ]
    )
    first, second = head.detections(logits, torch.zeros(5, 2, 4), rois, [(64, 25), (64, 64)])
    assert first["labels"].tolist() == [1, 0, 0]

    def softmax(row, k):
        return math.exp(row[k]) / sum(math.exp(v) for v in row)

    expected = [softmax([0, -9, 6], 2), softmax([0, 5, -9], 1), softmax([0, 1, 0], 1)]
    assert first["scores"].tolist() == pytest.approx(expected, rel=1e-6)
    # boxes are decoded from the RoIs (zero deltas) and clipped to the image (64 x 25)
    assert first["boxes"].tolist() == [[0.0, 50.0, 20.0, 64.0], [11.0, 10.0, 25.0, 30.0], [25.0, 0.0, 25.0, 9.0]]
    assert second["boxes"].shape == (0, 4) and second["labels"].dtype == torch.int64
    head.max_detections = 100
    first, _ = head.detections(logits, torch.zeros(5, 2, 4), rois, [(64, 25), (64, 64)])
    assert first["labels"].tolist() == [1, 0, 0, 1, 1] and first["scores"][3].item() == pytest.approx(
        softmax([0, 6, 6], 2), rel=1e-6
    )
