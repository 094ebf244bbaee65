"""OHEMSampler: exactly the highest-loss candidates (ties: lower index), ratio/budget modes, NMS."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchvision.ops import box_iou

from balancedet.samplers import Candidates, OHEMSampler
from tests.samplers.strategies import FAST, check_result, count, matched_vectors, seeds


def hardest(indices: list[int], losses: list[float], k: int) -> list[int]:
    """Brute force: the k highest losses, equal losses by lower index."""
    return sorted(sorted(indices, key=lambda i: (-losses[i], i))[: max(k, 0)])


def tied_losses(n: int, seed: int) -> torch.Tensor:
    """Losses from a handful of values, so that ties are common."""
    return torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(seed)).float() / 4


@FAST
@given(matched=matched_vectors(), seed=seeds, ratio=st.sampled_from([0.0, 1.0, 3.0, 2.5]))
def test_ratio_mode_keeps_all_positives_and_the_hardest_negatives(matched, seed, ratio):
    losses = tied_losses(matched.numel(), seed)
    result = OHEMSampler(num=None, neg_pos_ratio=ratio)(Candidates(matched, cls_loss=losses))
    check_result(result, matched)
    positives = torch.nonzero(matched >= 0).flatten().tolist()
    negatives = torch.nonzero(matched == -1).flatten().tolist()
    assert result.pos_idx.tolist() == positives
    assert result.neg_idx.tolist() == hardest(negatives, losses.tolist(), int(ratio * len(positives)))


@FAST
@given(matched=matched_vectors(), seed=seeds, num=st.integers(0, 80))
def test_ratio_mode_with_a_budget(matched, seed, num):
    losses = tied_losses(matched.numel(), seed)
    result = OHEMSampler(num=num, pos_fraction=0.25)(Candidates(matched, cls_loss=losses))
    check_result(result, matched)
    positives = torch.nonzero(matched >= 0).flatten().tolist()
    negatives = torch.nonzero(matched == -1).flatten().tolist()
    kept_pos = hardest(positives, losses.tolist(), int(num * 0.25))
    assert result.pos_idx.tolist() == kept_pos
    n_neg = min(3 * len(kept_pos), num - len(kept_pos))
    assert result.neg_idx.tolist() == hardest(negatives, losses.tolist(), n_neg)


@FAST
@given(matched=matched_vectors(), seed=seeds, num=st.integers(0, 80))
def test_budget_mode_takes_the_top_num_regardless_of_class(matched, seed, num):
    losses = tied_losses(matched.numel(), seed)
    losses[matched == -2] = 10.0  # ignored candidates are never kept, however high their loss
    result = OHEMSampler(num=num, mode="budget")(Candidates(matched, cls_loss=losses))
    check_result(result, matched)
    valid = torch.nonzero(matched >= -1).flatten().tolist()
    kept = hardest(valid, losses.tolist(), num)
    assert sorted(result.indices.tolist()) == kept


def test_ties_go_to_the_lower_index():
    matched = torch.tensor([0, -1, -1, -1, -1, -1])
    losses = torch.tensor([1.0, 0.5, 0.9, 0.5, 0.9, 0.5])
    result = OHEMSampler(num=None, neg_pos_ratio=3.0)(Candidates(matched, cls_loss=losses))
    assert result.neg_idx.tolist() == [1, 2, 4]


def test_images_without_positives_keep_min_neg():
    matched = torch.full((10,), -1)
    losses = torch.arange(10.0)
    assert count(OHEMSampler(num=None)(Candidates(matched, cls_loss=losses)).neg) == 0
    assert OHEMSampler(num=None, min_neg=4)(Candidates(matched, cls_loss=losses)).neg_idx.tolist() == [6, 7, 8, 9]


def test_nms_removes_overlapping_candidates_before_ranking():
    # candidates 0/1 overlap (IoU 0.9), so do 2/3 (0.9), 4 is alone; losses rank 1 > 0 and 2 > 3.
    boxes = torch.tensor(
        [[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30], [21, 20, 30, 30], [50, 50, 60, 60]], dtype=torch.float32
    )
    matched = torch.tensor([0, -1, -1, -1, -1])
    losses = torch.tensor([0.1, 0.9, 0.8, 0.7, 0.2])
    candidates = Candidates(matched, cls_loss=losses, boxes=boxes)
    result = OHEMSampler(num=None, neg_pos_ratio=3.0, nms_iou=0.7)(candidates)
    assert result.pos_idx.tolist() == [] and result.neg_idx.tolist() == []  # the positive was suppressed
    budget = OHEMSampler(num=3, mode="budget", nms_iou=0.7)(candidates)
    assert budget.neg_idx.tolist() == [1, 2, 4]
    assert OHEMSampler(num=3, mode="budget")(candidates).neg_idx.tolist() == [1, 2, 3]


@FAST
@given(seed=seeds, n=st.integers(1, 60))
def test_nms_survivors_do_not_overlap_and_cover_the_suppressed(seed, n):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 40
    boxes = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=gen) * 20], dim=1)
    matched = torch.randint(-2, 2, (n,), generator=gen)
    losses = torch.rand(n, generator=gen)
    sampler = OHEMSampler(num=n, mode="budget", nms_iou=0.5)
    kept = sampler(Candidates(matched, cls_loss=losses, boxes=boxes)).keep
    iou = box_iou(boxes, boxes)
    k = torch.nonzero(kept).flatten()
    assert (iou[k][:, k] - torch.eye(k.numel()) <= 0.5).all()
    for i in torch.nonzero((matched >= -1) & ~kept).flatten().tolist():
        assert ((iou[i, k] > 0.5) & (losses[k] >= losses[i])).any()
    assert not kept[matched == -2].any()


def test_batched_masks_equal_per_image_results():
    gen = torch.Generator().manual_seed(0)
    matched = torch.randint(-2, 3, (4, 300), generator=gen)
    losses = torch.rand(4, 300, generator=gen)
    for sampler in (OHEMSampler(num=None), OHEMSampler(num=64), OHEMSampler(num=64, mode="budget")):
        batched = sampler(Candidates(matched, cls_loss=losses))
        for b in range(4):
            one = sampler(Candidates(matched[b], cls_loss=losses[b]))
            assert torch.equal(torch.nonzero(batched.pos[b]).flatten(), one.pos_idx)
            assert torch.equal(torch.nonzero(batched.neg[b]).flatten(), one.neg_idx)


def test_batched_nms_matches_per_image():
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(2, 50, 2, generator=gen) * 30
    boxes = torch.cat([xy, xy + 10], dim=-1)
    matched = torch.randint(-1, 2, (2, 50), generator=gen)
    losses = torch.rand(2, 50, generator=gen)
    sampler = OHEMSampler(num=20, mode="budget", nms_iou=0.5)
    batched = sampler(Candidates(matched, cls_loss=losses, boxes=boxes))
    for b in range(2):
        one = sampler(Candidates(matched[b], cls_loss=losses[b], boxes=boxes[b]))
        assert torch.equal(torch.nonzero(batched.keep[b]).flatten(), one.indices.sort().values)


def test_losses_with_grad_are_detached():
    matched = torch.tensor([0, -1, -1])
    losses = torch.tensor([0.2, 0.5, 0.1], requires_grad=True)
    candidates = Candidates(matched, cls_loss=losses * 2, box_loss=losses * 3)
    assert OHEMSampler(num=None, neg_pos_ratio=1.0)(candidates).neg_idx.tolist() == [1]
    assert not OHEMSampler().score(candidates).requires_grad


def test_box_loss_joins_the_ranking_on_positives_only():
    # OHEM sec. 4.1 ranks by the multitask loss: cls + box. Positive 1 is hard only by its box loss;
    # negative 3's box loss is garbage (no regression target) and is treated as 0.
    matched = torch.tensor([0, 1, -1, -1])
    cls = torch.tensor([0.5, 0.1, 0.3, 0.2])
    box = torch.tensor([0.0, 0.9, 0.0, 9.0])
    sampler = OHEMSampler(num=2, mode="budget")
    assert sampler(Candidates(matched, cls_loss=cls)).indices.tolist() == [0, 2]
    both = Candidates(matched, cls_loss=cls, box_loss=box)
    assert sampler(both).indices.tolist() == [0, 1]
    assert sampler.score(both).tolist() == pytest.approx([0.5, 1.0, 0.3, 0.2])


def test_needs_boxes_only_with_nms():
    assert OHEMSampler().needs == {"cls_loss"}
    assert OHEMSampler(nms_iou=0.7).needs == {"cls_loss", "boxes"}


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        OHEMSampler(mode="topk")
    with pytest.raises(ValueError, match="budget"):
        OHEMSampler(num=None, mode="budget")
    with pytest.raises(ValueError, match="OHEMSampler needs .*boxes"):
        OHEMSampler(nms_iou=0.7)(Candidates(torch.tensor([0, -1, -1]), cls_loss=torch.rand(3)))
    with pytest.raises(ValueError, match=r"boxes must have shape \(3, 4\)"):
        Candidates(torch.tensor([0, -1, -1]), cls_loss=torch.rand(3), boxes=torch.rand(3, 5))
    with pytest.raises(ValueError, match="cls_loss"):
        Candidates(torch.tensor([0, -1, -1]), cls_loss=torch.rand(4))
    with pytest.raises(ValueError, match="OHEMSampler needs .*cls_loss"):
        OHEMSampler()(Candidates(torch.tensor([0, -1, -1]), box_loss=torch.rand(3)))
