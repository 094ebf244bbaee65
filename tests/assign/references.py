"""Independent references for the assigners: plain Python loops over anchors and boxes, in float64.

Written from the papers' rules, not from the library's code: one anchor, one box at a time. Fed
integer (or half-integer) coordinates, every area and intersection is exact in float64, so the
IoUs are the correctly rounded quotients the library computes too and the comparisons can be exact.
"""

import statistics


def area(box):
    return (box[2] - box[0]) * (box[3] - box[1])


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / (area(a) + area(b) - inter)


def usable(box, label):
    """Ground truth that takes part: not padding, positive width and height."""
    return label >= 0 and box[2] > box[0] and box[3] > box[1]


def labels_of(matched, gt_labels, num_classes):
    return [gt_labels[m] if m >= 0 else (num_classes if m == -1 else -1) for m in matched]


def max_iou_assign(anchors, boxes, gt_labels, num_classes, pos_iou, neg_iou, min_pos_iou, low_quality):
    """One image: ``(matched, labels, max_iou)`` lists by the RetinaNet / Faster R-CNN rules.

    Step 1: best box per anchor (first of equal IoUs). Step 2: >= pos_iou positive, < neg_iou
    background, else ignored (-2). Step 3: every box whose best IoU m exceeds min_pos_iou claims all
    anchors at IoU m; a claimed anchor goes to its claimant of highest IoU, then lowest index.
    """
    keep = [usable(b, lab) for b, lab in zip(boxes, gt_labels, strict=True)]
    table = [[iou(a, b) if k else 0.0 for b, k in zip(boxes, keep, strict=True)] for a in anchors]
    matched, best_ious = [], []
    for row in table:
        best, arg = -1.0, -1
        for j, v in enumerate(row):
            if v > best:
                best, arg = v, j
        best = max(best, 0.0)
        best_ious.append(best)
        matched.append(arg if best >= pos_iou else (-1 if best < neg_iou else -2))
    if low_quality:
        claims = {}
        for j in range(len(boxes)):
            if not keep[j]:
                continue
            top = max((row[j] for row in table), default=0.0)
            if top <= min_pos_iou:
                continue
            for i, row in enumerate(table):
                if row[j] == top:
                    claims.setdefault(i, []).append((top, -j))
        for i, offers in claims.items():
            matched[i] = -max(offers)[1]
    return matched, labels_of(matched, gt_labels, num_classes), best_ious


def centre(box):
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def atss_assign(anchors, num_per_level, boxes, gt_labels, num_classes, topk, center_eps=0.01):
    """One image by ATSS (arXiv 1912.02424, Alg. 1): ``(matched, labels, ambiguous)``.

    Per box and level the ``topk`` anchors of nearest centre (ties: lowest anchor index); the
    threshold is the candidates' IoU mean plus their sample standard deviation; positives reach it
    and have their centre more than ``center_eps`` inside the box; an anchor positive for several
    boxes takes the highest IoU, then the lowest box index. ``ambiguous`` is True when a candidate's
    IoU lies within 1e-9 of a positive threshold without equalling it exactly, or equals it while the
    candidates are not all equal: there rounding in the mean and standard deviation decides.
    """
    offers = {}
    ambiguous = False
    for j, (box, label) in enumerate(zip(boxes, gt_labels, strict=True)):
        if not usable(box, label):
            continue
        gx, gy = centre(box)
        candidates, start = [], 0
        for count in num_per_level:
            level = range(start, start + count)
            distance = [(centre(anchors[i])[0] - gx) ** 2 + (centre(anchors[i])[1] - gy) ** 2 for i in level]
            candidates += sorted(level, key=lambda i: (distance[i - level.start], i))[:topk]
            start += count
        ious = [iou(anchors[i], box) for i in candidates]
        spread = statistics.stdev(ious) if len(ious) > 1 else 0.0
        threshold = statistics.fmean(ious) + spread
        for i, v in zip(candidates, ious, strict=True):
            if threshold > 0 and abs(v - threshold) <= 1e-9:
                ambiguous = True
            cx, cy = centre(anchors[i])
            inside = min(cx - box[0], cy - box[1], box[2] - cx, box[3] - cy) > center_eps
            if v >= threshold and inside:
                offers.setdefault(i, []).append((v, -j))
    matched = [-1] * len(anchors)
    for i, options in offers.items():
        matched[i] = -max(options)[1]
    return matched, labels_of(matched, gt_labels, num_classes), ambiguous
