"""Max-IoU assignment of anchors to ground-truth boxes (RetinaNet, Faster R-CNN's RPN).

Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, arXiv 1708.02002, sec. 4: an
anchor is foreground when its IoU with a box is >= 0.5, background when its best IoU is < 0.4,
ignored in between. Ren et al., "Faster R-CNN", NeurIPS 2015, arXiv 1506.01497, sec. 3.1.2, adds
the low-quality matches: each box also claims "the anchor/anchors with the highest IoU" with it.

Batched over images with padded ground truth, and chunked over anchors (and images) so that the
``(B, G, A)`` IoU block never has to exist at once. Two defects of mmdetection's
``MaxIoUAssigner`` are not repeated (docs/conventions.md): low-quality matching is
vectorised instead of a Python loop over boxes, and a box whose best IoU is 0 claims nothing
(``> min_pos_iou``, strictly) instead of claiming every anchor it does not touch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from balancedet.assign.result import BACKGROUND, IGNORE, AssignResult
from balancedet.boxes.ops import box_area, broadcast_box_iou, valid_boxes

#: Default bound on the elements of one ``(B, G, A_chunk)`` IoU block on CPU: 2 MiB per float32
#: block, so that the dozen element-wise steps run in cache. Measured single-threaded on 8 x 120k
#: anchors x 50 boxes (2-MiB-L2 EPYC): 2^18 123 ms, 2^19 97 ms, 2^20 105 ms, 2^22 338 ms, 2^24 698 ms.
CPU_MAX_ELEMENTS = 1 << 19
#: Fewest anchors per chunk before images are split into groups (keeps per-chunk overheads small).
MIN_CHUNK_ANCHORS = 1024
#: Default bound on accelerators: 2^26 elements, about 12 bytes of temporaries each at the peak,
#: i.e. <= 0.8 GiB; 200k anchors x 500 boxes x 1 image then takes two chunks.
ACCELERATOR_MAX_ELEMENTS = 1 << 26


def default_max_elements(device: torch.device) -> int:
    return CPU_MAX_ELEMENTS if device.type == "cpu" else ACCELERATOR_MAX_ELEMENTS


def prepare_ground_truth(
    anchors: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    num_classes: int,
    image_ids: Sequence[object] | None,
    check_inputs: bool,
    where: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validate an assigner's inputs and neutralise the boxes that must never match.

    Returns ``anchors: (A, 4)`` and ``boxes: (B, G, 4)`` in the compute dtype (the promotion of
    both, at least float32), ``boxes_area: (B, G)`` with ``inf`` for padded and degenerate boxes
    (whose coordinates are zeroed) so their IoU with any anchor is exactly 0, and ``valid: (B, G)``.
    With ``check_inputs``, one host sync per call checks the labels and warns, once, about the
    degenerate boxes of every image (``image_ids[b]`` if given, else the batch index).
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{where}: num_classes must be a positive int, got {num_classes!r}")
    if anchors.ndim != 2 or anchors.shape[1] != 4 or not anchors.is_floating_point():
        raise ValueError(
            f"{where}: anchors must be a floating (A, 4) tensor, got {tuple(anchors.shape)} {anchors.dtype}"
        )
    if gt_boxes.ndim != 3 or gt_boxes.shape[2] != 4 or not gt_boxes.is_floating_point():
        raise ValueError(
            f"{where}: gt_boxes must be a floating (B, G, 4) tensor (padded), "
            f"got {tuple(gt_boxes.shape)} {gt_boxes.dtype}"
        )
    if gt_labels.shape != gt_boxes.shape[:2] or gt_labels.is_floating_point() or gt_labels.dtype == torch.bool:
        raise ValueError(
            f"{where}: gt_labels must be an integer (B, G) tensor matching gt_boxes {tuple(gt_boxes.shape)}, "
            f"got {tuple(gt_labels.shape)} {gt_labels.dtype}"
        )
    if anchors.device != gt_boxes.device or gt_labels.device != gt_boxes.device:
        raise ValueError(
            f"{where}: anchors ({anchors.device}), gt_boxes ({gt_boxes.device}) and gt_labels ({gt_labels.device}) "
            "must be on one device"
        )
    if image_ids is not None and len(image_ids) != gt_boxes.shape[0]:
        raise ValueError(f"{where}: {len(image_ids)} image_ids for a batch of {gt_boxes.shape[0]} images")
    dtype = torch.promote_types(torch.promote_types(anchors.dtype, gt_boxes.dtype), torch.float32)
    anchors, gt_boxes = anchors.to(dtype), gt_boxes.to(dtype)
    labelled = gt_labels >= 0
    valid = labelled & valid_boxes(gt_boxes)
    if check_inputs and gt_labels.numel():
        degenerate = (labelled & ~valid).sum(1)
        too_large = (gt_labels >= num_classes).sum(1)
        counts = torch.stack((degenerate, too_large)).tolist()
        names = list(image_ids) if image_ids is not None else list(range(gt_boxes.shape[0]))
        bad_labels = [f"image {names[b]!r}: {n}" for b, n in enumerate(counts[1]) if n]
        if bad_labels:
            raise ValueError(f"{where}: labels >= num_classes={num_classes} ({', '.join(bad_labels)} boxes)")
        dropped = [f"image {names[b]!r}: {n} box{'es' if n > 1 else ''}" for b, n in enumerate(counts[0]) if n]
        if dropped:
            warnings.warn(
                f"{where}: dropped ground-truth boxes with width or height <= 0 ({'; '.join(dropped)})", stacklevel=3
            )
    boxes = torch.where(valid[..., None], gt_boxes, torch.zeros((), dtype=dtype, device=gt_boxes.device))
    area = torch.where(valid, box_area(boxes), torch.full((), float("inf"), dtype=dtype, device=gt_boxes.device))
    return anchors, boxes, area, valid


def build_result(matched: Tensor, gt_labels: Tensor, max_iou: Tensor, num_classes: int) -> AssignResult:
    """Fill ``labels: (B, A)`` from ``matched: (B, A)`` and the padded ``gt_labels: (B, G)``.

    One gather from a per-image table ``[gt_labels..., num_classes, -1]`` indexed by ``matched``
    with background sent to column ``G`` and ignore to ``G + 1``; in place, so the peak is two
    ``(B, A)`` int64 blocks next to ``matched`` (it matters on CPU at 8 x 120k anchors).
    """
    batch, num_boxes = gt_labels.shape
    table = torch.cat(
        (
            gt_labels.long(),
            gt_labels.new_full((batch, 1), num_classes, dtype=torch.long),
            gt_labels.new_full((batch, 1), -1, dtype=torch.long),
        ),
        dim=1,
    )
    index = matched.clone()
    index.masked_fill_(matched == BACKGROUND, num_boxes).masked_fill_(matched == IGNORE, num_boxes + 1)
    labels = table.gather(1, index)
    return AssignResult(matched=matched, labels=labels, max_iou=max_iou, num_classes=num_classes)


def empty_result(batch: int, num_anchors: int, gt_labels: Tensor, dtype: torch.dtype, num_classes: int) -> AssignResult:
    """All anchors background with ``max_iou`` 0 (images without boxes)."""
    device = gt_labels.device
    matched = torch.full((batch, num_anchors), BACKGROUND, dtype=torch.long, device=device)
    return build_result(matched, gt_labels, torch.zeros((batch, num_anchors), dtype=dtype, device=device), num_classes)


def resolve_claims(matched: Tensor, image: Tensor, anchor: Tensor, box: Tensor, iou: Tensor) -> None:
    """Write low-quality claims into ``matched: (B, A)`` in place.

    The claims are ``(image, anchor, box, iou)`` rows, ``(K,)`` each. An anchor claimed by several
    boxes goes to the one of highest IoU with it, ties to the lowest box index: three stable sorts
    put each anchor's winner first in its run.
    """
    flat = image * matched.shape[1] + anchor
    order = torch.argsort(box, stable=True)
    order = order[torch.argsort(iou[order], descending=True, stable=True)]
    order = order[torch.argsort(flat[order], stable=True)]
    flat, box = flat[order], box[order]
    first = torch.ones_like(flat, dtype=torch.bool)
    first[1:] = flat[1:] != flat[:-1]
    matched.view(-1)[flat[first]] = box[first]


class MaxIoUAssigner:
    """Threshold assignment on IoU with low-quality matches (RetinaNet defaults: 0.5 / 0.4 / 0).

    Args:
        pos_iou: an anchor whose best IoU is ``>= pos_iou`` is foreground, matched to that box.
        neg_iou: an anchor whose best IoU is ``< neg_iou`` is background; in between, ignored.
        min_pos_iou: a box claims its best anchors (low-quality matches) only when its best IoU
            is ``> min_pos_iou``, strictly: a box that overlaps no anchor claims nothing.
        low_quality: turn the low-quality matches on (Faster R-CNN rule (i); on in RetinaNet).
        max_elements: bound on the elements of one ``(B_group, G, A_chunk)`` IoU block; ``None``
            picks ``CPU_MAX_ELEMENTS`` or ``ACCELERATOR_MAX_ELEMENTS`` by device. Chunked results
            are bit-identical to unchunked ones.
        check_inputs: validate labels and warn about degenerate boxes, at the cost of one host
            sync per call; with ``False`` degenerate boxes are still dropped, silently, and a problem
            that fits in one block runs without any host sync.

    Rules, per image, over the valid boxes (label >= 0, width and height > 0; padded and
    degenerate boxes never match):

    1. Each anchor takes the box of highest IoU (ties: the lowest box index); ``max_iou`` is that IoU.
    2. ``max_iou >= pos_iou``: positive for that box; ``< neg_iou``: background; else ignored.
    3. Low-quality: each box ``g`` whose best IoU over all anchors, ``m_g``, is ``> min_pos_iou``
       claims every anchor whose IoU with it equals ``m_g`` exactly (ties included). A claimed
       anchor becomes positive for the claiming box of highest IoU with it, ties to the lowest
       box index, overriding step 2. (torchvision's ``Matcher`` instead gives a claimed anchor
       to its own best box from step 1, even when that box did not claim it; mmdetection gives
       it to the claiming box of highest index.)

    Chunking: images are taken in groups and anchors in chunks so that one IoU block holds at most
    ``max_elements``. Step 3 needs each box's best IoU over all anchors, known only after the last
    chunk, so one pass does steps 1-2 and keeps each chunk's per-box maxima ``(chunks, B, G)``;
    then only the chunks that hold some box's maximum are revisited, against just those boxes (a
    ``(K, A_chunk)`` block for ``K`` such boxes), to list the claimed anchors: the full IoU block is
    computed once. The chunked path syncs with the host once per chunk (to index its positives and
    its claims); a problem that fits in one block is assigned densely without syncs.
    """

    def __init__(
        self,
        pos_iou: float = 0.5,
        neg_iou: float = 0.4,
        min_pos_iou: float = 0.0,
        low_quality: bool = True,
        max_elements: int | None = None,
        check_inputs: bool = True,
    ):
        if not 0 < neg_iou <= pos_iou:
            raise ValueError(f"MaxIoUAssigner: need 0 < neg_iou <= pos_iou, got neg_iou={neg_iou}, pos_iou={pos_iou}")
        if min_pos_iou < 0:
            raise ValueError(f"MaxIoUAssigner: min_pos_iou must be >= 0, got {min_pos_iou}")
        if max_elements is not None and max_elements < 1:
            raise ValueError(f"MaxIoUAssigner: max_elements must be >= 1, got {max_elements}")
        self.pos_iou = float(pos_iou)
        self.neg_iou = float(neg_iou)
        self.min_pos_iou = float(min_pos_iou)
        self.low_quality = bool(low_quality)
        self.max_elements = max_elements
        self.check_inputs = bool(check_inputs)

    def __call__(
        self,
        anchors: Tensor,
        gt_boxes: Tensor,
        gt_labels: Tensor,
        num_classes: int,
        image_ids: Sequence[object] | None = None,
    ) -> AssignResult:
        """Assign ``anchors: (A, 4)`` (shared by the batch) to ``gt_boxes: (B, G, 4)`` padded.

        ``gt_labels: (B, G)`` int, class in ``[0, num_classes)`` or -1 for padding; ``image_ids``
        name the images in warnings and errors (default: their batch index). Returns an
        ``AssignResult`` with ``(B, A)`` fields.
        """
        anchors, boxes, area, valid = prepare_ground_truth(
            anchors, gt_boxes, gt_labels, num_classes, image_ids, self.check_inputs, "MaxIoUAssigner"
        )
        batch, num_boxes = gt_labels.shape
        num_anchors = anchors.shape[0]
        if num_boxes == 0 or num_anchors == 0:
            return empty_result(batch, num_anchors, gt_labels, anchors.dtype, num_classes)
        max_elements = self.max_elements or default_max_elements(anchors.device)
        # as many images per group as leave room for MIN_CHUNK_ANCHORS anchors in a chunk
        group = min(batch, max(1, max_elements // (num_boxes * min(num_anchors, MIN_CHUNK_ANCHORS))))
        chunk = max(1, max_elements // (group * num_boxes))
        if group == batch and chunk >= num_anchors:
            matched, max_iou = self._assign_block(anchors, boxes, area, valid)
        else:
            matched = torch.empty((batch, num_anchors), dtype=torch.long, device=anchors.device)
            max_iou = anchors.new_empty((batch, num_anchors))
            for s in range(0, batch, group):
                rows = slice(s, s + group)
                self._assign_chunked(anchors, boxes[rows], area[rows], valid[rows], chunk, matched[rows], max_iou[rows])
        return build_result(matched, gt_labels, max_iou, num_classes)

    def _threshold(self, max_iou: Tensor, argmax: Tensor) -> Tensor:
        """Step 2 in place on step 1's ``argmax``, which becomes ``matched``."""
        return argmax.masked_fill_(max_iou < self.pos_iou, IGNORE).masked_fill_(max_iou < self.neg_iou, BACKGROUND)

    def _claim_at(self, box_max: Tensor, valid: Tensor) -> Tensor:
        """``(B, G)``: the IoU at which each box claims anchors, ``inf`` for boxes that claim none."""
        return torch.where(valid & (box_max > self.min_pos_iou), box_max, float("inf"))

    def _assign_block(self, anchors: Tensor, boxes: Tensor, area: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """The whole ``(B, G, A)`` block at once, sync-free: ``matched`` and ``max_iou``, ``(B, A)``."""
        iou = broadcast_box_iou(anchors, boxes, area, box_major=True)
        max_iou, matched = iou.max(dim=1)
        self._threshold(max_iou, matched)
        if self.low_quality:
            claim_at = self._claim_at(iou.amax(dim=2), valid)[:, :, None]
            # IoU <= its box's maximum, so ``>=`` is equality; claimants keep their IoU (> 0), others 0.
            claim_iou, claimer = iou.mul_(iou >= claim_at).max(dim=1)
            matched = torch.where(claim_iou > 0, claimer, matched)
        return matched, max_iou

    def _assign_chunked(
        self,
        anchors: Tensor,
        boxes: Tensor,
        area: Tensor,
        valid: Tensor,
        chunk: int,
        matched: Tensor,
        max_iou: Tensor,
    ) -> None:
        """Fill ``matched`` and ``max_iou``, ``(b, A)`` row blocks of the outputs, chunk by chunk.

        Per chunk, the ``(b, G, chunk)`` block's maxima over boxes and over anchors are plain
        reductions; the argmax over boxes (a reduction with indices, as slow as the IoU itself on
        CPU) is taken only for the anchors at or above ``pos_iou``, the only ones that keep it.
        """
        num_anchors = anchors.shape[0]
        bounds = [(s, min(s + chunk, num_anchors)) for s in range(0, num_anchors, chunk)]
        chunk_max = anchors.new_empty((len(bounds), *valid.shape)) if self.low_quality else None
        for i, (start, end) in enumerate(bounds):
            iou = broadcast_box_iou(anchors[start:end], boxes, area, box_major=True)
            values = iou.amax(dim=1)
            max_iou[:, start:end] = values
            part = torch.full_like(values, IGNORE, dtype=torch.long).masked_fill_(values < self.neg_iou, BACKGROUND)
            image, anchor = (values >= self.pos_iou).nonzero(as_tuple=True)
            part[image, anchor] = iou[image, :, anchor].argmax(dim=1)
            matched[:, start:end] = part
            if chunk_max is not None:
                torch.amax(iou, dim=2, out=chunk_max[i])
        if chunk_max is None:
            return
        claim_at = self._claim_at(chunk_max.amax(dim=0), valid)
        hit_chunk, hit_image, hit_box = (chunk_max == claim_at).nonzero(as_tuple=True)
        claims = []
        for i in hit_chunk.unique().tolist():
            in_chunk = hit_chunk == i
            image, box = hit_image[in_chunk], hit_box[in_chunk]
            start, end = bounds[i]
            # every element goes through the same operations as in the first pass: bit-identical IoUs
            iou = broadcast_box_iou(anchors[start:end], boxes[image, box][None], area[image, box][None], box_major=True)
            at = claim_at[image, box]
            k, anchor = (iou[0] == at[:, None]).nonzero(as_tuple=True)
            claims.append((image[k], anchor + start, box[k], at[k]))
        if claims:
            resolve_claims(matched, *(torch.cat(column) for column in zip(*claims, strict=True)))


__all__ = [
    "ACCELERATOR_MAX_ELEMENTS",
    "CPU_MAX_ELEMENTS",
    "MIN_CHUNK_ANCHORS",
    "MaxIoUAssigner",
    "build_result",
    "default_max_elements",
    "empty_result",
    "prepare_ground_truth",
    "resolve_claims",
]
