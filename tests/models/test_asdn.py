"""A-Fast-RCNN's ASDN: the pre-training target is the window of highest loss (a classifier that reads one
window, and a brute-force loop over the box head), the pre-training loss's weighting, the joint mask
(exactly the drop count, within the top candidates, positives of masked images only), gradients that
reach ASDN only through its own loss, one training step per stage, ASDN on OHEM's selected RoIs only, and
an evaluation that ignores ASDN."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from balancedet.models import ResNetBackbone, build_pyramid
from balancedet.models.a_fast_rcnn import JOINT_START, PRETRAIN_START, AFastRCNN
from balancedet.models.asdn import (
    ASDN,
    asdn_joint_loss,
    asdn_pretrain_loss,
    occlusion_windows,
    pretrain_mask_targets,
    sample_drop_mask,
    window_starts,
)
from balancedet.models.faster_rcnn import FasterRCNN
from balancedet.models.roi_head import BoxHead, RoITargets
from balancedet.models.rpn import RPN_STRIDES
from balancedet.samplers import OHEMSampler, RandomSampler
from tests.models.test_retinanet import batch

NUM_CLASSES = 3
LOSS_KEYS = {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_asdn"}
SMALL = {
    "representation_size": 64,
    "rpn_pre_nms_top_n_train": 300,
    "rpn_post_nms_top_n_train": 200,
    "rpn_pre_nms_top_n_test": 200,
    "rpn_post_nms_top_n_test": 100,
    "roi_sampler": RandomSampler(128, 0.25),
}


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return ResNetBackbone(18, norm="bn", frozen_stages=-1, levels=(2, 3, 4, 5))


def pyramid(backbone):
    return build_pyramid(copy.deepcopy(backbone), RPN_STRIDES, extra_from="maxpool", channels=16)


def tiny(backbone, **asdn_args):
    """ResNet-18, a 16-channel FPN, a 64-wide 2-fc head and an 8-channel ASDN."""
    torch.manual_seed(0)
    trunk, neck = pyramid(backbone)
    return AFastRCNN(NUM_CLASSES, trunk, neck, adversary=ASDN(16, hidden_channels=8, **asdn_args), **SMALL)


def reference_starts(size, window, stride):
    """``ASDNPretrainDataLayer.generate_feature``'s loop: a start past the edge moves back by one cell."""
    starts = []
    for i in range(math.ceil(size / stride)):
        start = i * stride
        if start + window > size:
            start -= 1
        starts.append(start)
    return starts


# ---- pre-training target ----------------------------------------------------------------------------------


def test_windows_follow_the_authors_rule_for_a_7x7_map():
    assert window_starts(7, 2, 2) == reference_starts(7, 2, 2) == [0, 2, 4, 5]
    assert window_starts(6, 2, 2) == reference_starts(6, 2, 2) == [0, 2, 4]
    windows = occlusion_windows(7, 2, 2)
    assert windows.shape == (16, 7, 7) and (windows.sum((1, 2)) == 4).all()
    # row-major order of the starts: window 6 is rows 2-3, columns 4-5
    assert windows[6].nonzero().tolist() == [[2, 4], [2, 5], [3, 4], [3, 5]]
    assert windows.any(0).all()  # together they cover the map
    with pytest.raises(ValueError, match="window"):
        window_starts(7, 8, 2)


def test_the_target_is_the_window_the_classifier_depends_on():
    # the ground-truth logit is the sum of the features in rows 2-3, columns 4-5 (window 6) and nothing
    # else: zeroing that window hurts most; the overlapping windows 5 and 7 hurt half as much
    torch.manual_seed(0)
    features = torch.rand(5, 3, 7, 7) + 0.1
    labels = torch.tensor([1, 2, 1, 2, 1])

    def classify(x):
        logits = torch.zeros(x.shape[0], NUM_CLASSES + 1)
        return logits.scatter(1, labels[:, None], x[:, :, 2:4, 4:6].sum((1, 2, 3))[:, None])

    windows = occlusion_windows(7, 2, 2)
    targets, chosen = pretrain_mask_targets(features, labels, classify, windows)
    assert chosen.tolist() == [6] * 5
    assert torch.equal(targets, windows[6].float().expand(5, 7, 7))


def test_the_target_matches_a_brute_force_loop_over_the_box_head():
    torch.manual_seed(0)
    head = BoxHead(4, NUM_CLASSES, 7, 16)
    features = torch.randn(12, 4, 7, 7)
    labels = torch.randint(1, NUM_CLASSES + 1, (12,))
    _, chosen = pretrain_mask_targets(features, labels, lambda x: head(x)[0], occlusion_windows(7, 2, 2))
    starts = reference_starts(7, 2, 2)
    for p in range(12):
        best, best_id, k = -1.0, 0, 0
        for y in starts:
            for x in starts:
                occluded = features[p : p + 1].clone()
                occluded[:, :, y : y + 2, x : x + 2] = 0
                loss = F.cross_entropy(head(occluded)[0], labels[p : p + 1]).item()
                if loss > best:  # the authors' strict comparison: the first window wins ties
                    best, best_id = loss, k
                k += 1
        assert chosen[p].item() == best_id, p


def test_pretrain_loss_counts_target_cells_and_a_share_of_the_others():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 7, requires_grad=True)
    targets = occlusion_windows(7, 2, 2)[[0, 5, 15]].float()
    full = asdn_pretrain_loss(logits, targets, keep_negative=1.0)
    torch.testing.assert_close(full, F.binary_cross_entropy_with_logits(logits, targets))
    only_targets = asdn_pretrain_loss(logits, targets, keep_negative=0.0)
    (grad,) = torch.autograd.grad(only_targets, logits)
    assert (grad[targets == 0] == 0).all() and (grad[targets == 1] != 0).all()
    generator = torch.Generator().manual_seed(0)
    some = asdn_pretrain_loss(logits, targets, 0.4, generator)
    (grad,) = torch.autograd.grad(some, logits)
    share = (grad[targets == 0] != 0).float().mean().item()
    assert 0.25 < share < 0.55
    empty = asdn_pretrain_loss(torch.zeros(0, 7, 7, requires_grad=True), torch.zeros(0, 7, 7))
    assert empty.item() == 0 and empty.requires_grad


# ---- joint training --------------------------------------------------------------------------------------


def test_the_mask_drops_exactly_the_count_among_the_top_candidates():
    torch.manual_seed(0)
    scores = torch.randn(50, 7, 7)
    dropped = sample_drop_mask(scores, 15, 20)
    assert dropped.shape == (50, 7, 7) and (dropped.sum((1, 2)) == 15).all()
    top = torch.zeros(50, 49, dtype=torch.bool).scatter(1, scores.flatten(1).topk(20, 1).indices, True)
    assert not (dropped.flatten(1) & ~top).any()
    # importance sampling, not a fixed top 15: over the draws every candidate is dropped at some point
    seen = torch.zeros(50, 49, dtype=torch.bool)
    for _ in range(30):
        seen |= sample_drop_mask(scores, 15, 20).flatten(1)
    assert torch.equal(seen, top)
    exact = sample_drop_mask(scores, 15, 15)
    assert torch.equal(
        exact.flatten(1), torch.zeros(50, 49, dtype=torch.bool).scatter(1, scores.flatten(1).topk(15, 1).indices, True)
    )
    with pytest.raises(ValueError, match="num_drop"):
        sample_drop_mask(scores, 21, 20)


def test_joint_loss_keeps_only_rois_whose_probability_fell():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 7)
    dropped = sample_drop_mask(logits, 15, 20)
    before, after = torch.tensor([0.9, 0.9, 0.5]), torch.tensor([0.5, 0.85, 0.1])
    loss = asdn_joint_loss(logits, dropped, before, after, num_rows=10, score_thresh=0.1)
    bce = F.binary_cross_entropy_with_logits(logits, dropped.float(), reduction="none").sum((1, 2))
    torch.testing.assert_close(loss, (bce[0] + bce[2]) / (10 * 49))


def roi_targets(labels):
    labels = torch.as_tensor(labels)
    zeros = torch.zeros(*labels.shape, 4)
    return RoITargets(zeros, torch.zeros_like(labels), labels, torch.zeros(labels.shape), zeros)


def test_joint_masks_only_the_positives_of_masked_images(backbone):
    model = tiny(backbone).train()
    model.set_progress(0.9)
    assert model.stage == 3
    targets = roi_targets([[0, 2, 1, 0, 3, 0], [1, 0, 2, 0, 0, 0]])
    rows = torch.tensor([[True, True, True, True, True, False], [True, True, True, False, False, False]])
    torch.manual_seed(1)
    pooled = torch.rand(8, 16, 7, 7) + 0.1  # nowhere zero: a zero is a dropped cell
    image = rows.nonzero()[:, 0]
    positive = targets.labels[rows] > 0
    # image 0 of the stream is masked, image 1 is left clean (the authors' maintain_before, iter_size 2)
    out, losses = model.adversarial_features(pooled, targets, rows)
    assert set(losses) == {"loss_asdn"} and model.adversary.images_seen.item() == 2
    zero_cells = (out == 0).all(1)
    masked_rows = positive & (image == 0)
    assert (zero_cells[masked_rows].flatten(1).sum(1) == 15).all()
    assert ((out == 0).any(1) == zero_cells).all()  # a dropped cell is zero in every channel
    assert torch.equal(out[~masked_rows], pooled[~masked_rows])
    top = model.adversary(pooled[masked_rows]).flatten(1).topk(20, 1).indices
    allowed = torch.zeros(int(masked_rows.sum()), 49, dtype=torch.bool).scatter(1, top, True)
    assert not (zero_cells[masked_rows].flatten(1) & ~allowed).any()
    assert torch.equal(
        out[masked_rows][~zero_cells[masked_rows][:, None].expand(-1, 16, -1, -1)],
        pooled[masked_rows][~zero_cells[masked_rows][:, None].expand(-1, 16, -1, -1)],
    )
    # every image masked without the clean alternation
    model = tiny(backbone, unmasked_every=0).train()
    model.set_progress(0.9)
    out, _ = model.adversarial_features(pooled, targets, rows)
    assert ((out == 0).all(1).flatten(1).sum(1) == 15 * positive).all()


def test_gradients_reach_asdn_only_through_its_own_loss(backbone):
    model = tiny(backbone, score_thresh=-1.0).train()  # every positive's mask counts
    model.set_progress(0.9)
    images, targets = batch()
    losses = model(images, targets)
    asdn = list(model.adversary.parameters())
    detector = [p for n, p in model.named_parameters() if not n.startswith("adversary.")]
    detector_loss = sum(v for k, v in losses.items() if k != "loss_asdn")
    assert all(g is None for g in torch.autograd.grad(detector_loss, asdn, retain_graph=True, allow_unused=True))
    grads = torch.autograd.grad(losses["loss_asdn"], asdn + detector, allow_unused=True)
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads[: len(asdn)])
    assert all(g is None for g in grads[len(asdn) :])


# ---- stages -----------------------------------------------------------------------------------------------


def test_stages_follow_progress_and_the_authors_iterations(backbone):
    assert PRETRAIN_START == pytest.approx(10 / 75) and JOINT_START == pytest.approx(35 / 75)
    model = tiny(backbone)
    stages = []
    for fraction in (0.0, 0.13, 0.14, 0.46, 0.47, 1.0):
        model.set_progress(fraction)
        stages.append(model.stage)
    assert stages == [1, 1, 2, 2, 3, 3]
    assert model.roi_head.criterion.progress == 1.0
    trunk, neck = pyramid(backbone)
    with pytest.raises(ValueError, match="pretrain_start"):
        AFastRCNN(NUM_CLASSES, trunk, neck, pretrain_start=0.5, joint_start=0.2)
    with pytest.raises(ValueError, match="the adversary takes"):
        AFastRCNN(NUM_CLASSES, trunk, neck, adversary=ASDN(32))
    assert AFastRCNN(NUM_CLASSES, trunk, neck).adversary.layers[0].out_channels == 256


@pytest.mark.parametrize("fraction, stage", [(0.05, 1), (0.3, 2), (0.9, 3)])
def test_one_training_step_per_stage(backbone, fraction, stage):
    model = tiny(backbone).train()
    model.set_progress(fraction)
    assert model.stage == stage
    images, targets = batch()
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    asdn = [p.grad for p in model.adversary.parameters()]
    detector = [p.grad for n, p in model.named_parameters() if not n.startswith("adversary.")]
    if stage == 1:
        assert losses["loss_asdn"].item() == 0 and all(g is None for g in asdn)
    else:
        # (stage 3's loss may be 0: an untrained detector's probabilities rarely fall by 0.1 under a mask)
        assert losses["loss_asdn"].item() >= 0 and all(g is not None and torch.isfinite(g).all() for g in asdn)
    if stage == 2:
        assert losses["loss_asdn"].item() > 0 and model.adversary.layers[0].weight.grad.abs().sum() > 0
    if stage == 2:  # the detector is fixed while ASDN pre-trains
        assert all(g is None for g in detector)
    else:
        assert model.roi_head.box_head.fc1.weight.grad.abs().sum() > 0
        assert model.backbone.layer1[0].conv1.weight.grad.abs().sum() > 0
        assert all(torch.isfinite(g).all() for g in detector if g is not None)


@pytest.mark.parametrize("fraction, stage", [(0.3, 2), (0.9, 3)])
def test_with_ohem_the_adversary_sees_the_selected_rois_only(backbone, fraction, stage):
    # the RoI head ranks every RoI on its clean features (OHEM's read-only pass), then ASDN works on the
    # 2 x 16 hard RoIs that train, as it would on a random sample in the authors' setting
    torch.manual_seed(0)
    trunk, neck = pyramid(backbone)
    small = {**SMALL, "roi_sampler": OHEMSampler(16, mode="budget", nms_iou=0.7)}
    model = AFastRCNN(NUM_CLASSES, trunk, neck, adversary=ASDN(16, hidden_channels=8), **small).train()
    model.set_progress(fraction)
    assert model.stage == stage
    seen = []
    transform = model.roi_head.feature_transform

    def recording(pooled, targets, rows):
        seen.append((pooled.shape[0], int(rows.sum())))
        return transform(pooled, targets, rows)

    model.roi_head.feature_transform = recording
    images, targets = batch()
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS and all(torch.isfinite(v) for v in losses.values())
    assert seen == [(32, 32)]
    sum(losses.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.adversary.parameters())
    fc1 = model.roi_head.box_head.fc1.weight.grad
    assert fc1 is None if stage == 2 else fc1.abs().sum() > 0


def test_evaluation_ignores_the_adversary(backbone):
    torch.manual_seed(0)
    trunk, neck = pyramid(backbone)
    plain = FasterRCNN(NUM_CLASSES, trunk, neck, **SMALL).eval()
    model = tiny(backbone)
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("adversary.") for k in missing)
    model.eval()
    images, _ = batch()
    with torch.no_grad():
        expected = plain(images)
        for fraction in (0.05, 0.3, 0.9):
            model.set_progress(fraction)
            out = model(images)
            for a, b in zip(out, expected, strict=True):
                assert all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "labels"))
    assert model.adversary.images_seen.item() == 0 and len(expected[0]["boxes"]) > 0


def test_pretraining_learns_the_window_the_classifier_depends_on():
    # a few Adam steps of the pre-training loss alone: ASDN's four most likely cells become the window
    torch.manual_seed(0)
    features = torch.rand(16, 3, 7, 7) + 0.1
    labels = torch.ones(16, dtype=torch.long)

    def classify(x):
        return F.pad(x[:, :, 2:4, 4:6].sum((1, 2, 3))[:, None], (1, NUM_CLASSES - 1))

    asdn = ASDN(3, hidden_channels=8, num_convs=2)
    optimizer = torch.optim.Adam(asdn.parameters(), lr=0.01)
    for _ in range(60):
        optimizer.zero_grad()
        asdn.pretrain_loss(features, labels, classify).backward()
        optimizer.step()
    top = asdn(features).flatten(1).topk(4, 1).indices.sort(1).values
    assert (top == torch.tensor([2 * 7 + 4, 2 * 7 + 5, 3 * 7 + 4, 3 * 7 + 5])).all()


def test_a_copy_keeps_its_own_hook(backbone):
    model = tiny(backbone)
    clone = copy.deepcopy(model)
    assert clone.roi_head.feature_transform.__self__ is clone
    assert model.roi_head.feature_transform.__self__ is model
