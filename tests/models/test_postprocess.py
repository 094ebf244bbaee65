import pytest
import torch
from torchvision.ops import box_iou

from balancedet.models.postprocess import detections_from_levels


def _reference(boxes, scores, image_sizes, score_thresh, topk, nms_iou, max_dets):
    """Brute force: per image and level, threshold then sort; greedy NMS per class in Python."""
    results = []
    for i, (h, w) in enumerate(image_sizes):
        cand = []
        for b, s in zip(boxes, scores, strict=True):
            level = []
            for a in range(s.shape[1]):
                for c in range(s.shape[2]):
                    if s[i, a, c] > score_thresh:
                        level.append((s[i, a, c].item(), a, c))
            level.sort(key=lambda t: -t[0])
            for score, a, c in level[:topk]:
                x1, y1, x2, y2 = b[i, a].tolist()
                box = [min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)]
                cand.append((score, c, box))
        cand.sort(key=lambda t: -t[0])
        kept = []
        for score, c, box in cand:
            same = [k for k in kept if k[1] == c]
            if all(box_iou(torch.tensor([box]), torch.tensor([k[2]])).item() <= nms_iou for k in same):
                kept.append((score, c, box))
        kept = kept[:max_dets]
        results.append(kept)
    return results


def _random_levels(batch, sizes, num_classes, extent=64.0):
    boxes, scores = [], []
    for a in sizes:
        xy = torch.rand(batch, a, 2) * extent
        wh = 4 + torch.rand(batch, a, 2) * extent / 2
        boxes.append(torch.cat((xy - 5, xy + wh), dim=-1))
        scores.append(torch.rand(batch, a, num_classes) ** 3)
    return boxes, scores


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force(seed):
    torch.manual_seed(seed)
    boxes, scores = _random_levels(2, [30, 12, 5], 3)
    sizes = [(60, 50), (64, 64)]
    args = dict(score_thresh=0.2, topk=15, nms_iou=0.5, max_dets=12)
    got = detections_from_levels(boxes, scores, sizes, **args)
    want = _reference(boxes, scores, sizes, **args)
    for g, w in zip(got, want, strict=True):
        assert g["labels"].dtype == torch.int64
        assert g["scores"].tolist() == pytest.approx([t[0] for t in w])
        assert g["labels"].tolist() == [t[1] for t in w]
        torch.testing.assert_close(g["boxes"], torch.tensor([t[2] for t in w]).reshape(-1, 4))


def test_contract_when_nothing_passes_the_threshold():
    boxes, scores = _random_levels(3, [10, 4], 2)
    out = detections_from_levels(boxes, [s * 0.01 for s in scores], [(64, 64)] * 3)
    assert len(out) == 3
    for d in out:
        assert d["boxes"].shape == (0, 4) and d["scores"].shape == (0,) and d["labels"].shape == (0,)


def test_max_dets_and_sorted_scores():
    torch.manual_seed(0)
    boxes, scores = _random_levels(1, [200], 5, extent=2000.0)
    (d,) = detections_from_levels(boxes, scores, [(2000, 2000)], score_thresh=0.0, max_dets=7)
    assert len(d["scores"]) == 7
    assert (d["scores"][:-1] >= d["scores"][1:]).all()
    assert d["labels"].min() >= 0 and d["labels"].max() < 5


def test_level_mismatch_is_an_error():
    boxes, scores = _random_levels(1, [10, 4], 2)
    with pytest.raises(ValueError, match="level 1"):
        detections_from_levels(boxes, [scores[0], scores[1][:, :3]], [(64, 64)])
