"""A-Fast-RCNN: Faster R-CNN + FPN trained against an Adversarial Spatial Dropout Network (Wang,
Shrivastava, Gupta, CVPR 2017, arXiv 1704.03414, sec. 3.1), in three stages chosen by training progress:

1. **Detector only** (the authors' ``experiments/scripts/fast_rcnn_std.sh``, 10K iterations): plain
   Faster R-CNN; ASDN is idle (its parameters get no gradient).
2. **ASDN pre-training, detector fixed** (sec. 3.1, "Model pre-training"; ``fast_rcnn_adv_pretrain.sh``,
   25K iterations, every detector layer at ``lr_mult: 0``): the whole detector runs without gradient and
   ASDN learns, on the positive RoIs, the ``d/3 x d/3`` window whose zeroing hurts the classifier most
   (``balancedet.models.asdn``). The detector's losses are still returned, for the log, but carry no graph,
   so the optimiser skips the detector's parameters (their gradients stay None).
3. **Joint training** (sec. 3.1, "Joint learning"; ``fast_rcnn_adv.sh``, 40K iterations): ASDN's sampled
   masks zero cells of the positive RoIs' features before the box head, the detector trains on them, and
   ASDN trains towards the masks that lowered the ground-truth probability by more than 0.1.

``set_progress(fraction)`` (the trainer calls it every step with ``step / total``) picks the stage:
``fraction < pretrain_start`` stage 1, ``< joint_start`` stage 2, else 3. The defaults are the authors'
iteration counts as fractions of their 75K: ``pretrain_start = 10 / 75``, ``joint_start = 35 / 75``.
(Counted in images, with the scripts' 2, 8 and 2 images per iteration, stage 2 would be two thirds of
the run; the trainer counts steps, so the fractions count iterations.) ``pretrain_start == joint_start``
skips stage 2; ``joint_start = 0`` is joint training from the start.

The training loss dict is Faster R-CNN's plus ``loss_asdn`` in every stage (0 in stage 1), so the log's
columns do not change mid-run. Evaluation never runs ASDN: detections are Faster R-CNN's.

The detector is ``FasterRCNN`` unchanged; ASDN reaches the pooled RoI features through the RoI head's
``feature_transform`` hook (training only), on the RoIs that train: the sampled ones, or with an OHEM
sampler the hard ones that its gradient-free ranking pass chose on the clean features (the authors sample
at random; ``balancedet.models.roi_head``). Where this differs from the authors' setting, and why:

- Their detector is Fast R-CNN on VGG16 (conv5_3, RoI pooling 7x7, selective-search proposals); here the
  RoIs come from the RPN and are RoIAlign-ed from their FPN level, the same ``d = 7`` map. In stage 2 the
  RPN is fixed with the rest of the detector.
- They restart the learning rate at each stage (0.001, steps at 20K in stage 2 and 30K in stage 3); here
  one schedule spans the run, as the trainer has one.
- Their joint stage starts from a network surgery that copies conv, fc6, fc7 and ``cls_score`` but not
  ``bbox_pred`` (``models/pascal_voc/VGG16/fast_rcnn_adv/init_weights2.json``), i.e. re-initialises the
  box regressor; that looks like an oversight and is not reproduced: the detector simply continues.
- Their stage 2 samples 64 RoIs per image at 0.75 foreground (``experiments/cfgs/fast_rcnn_adv_pretrain.yml``)
  to see more positives; here stage 2 uses the detector's RoI sampler (its positives are the ones ASDN
  learns on) so that no second sampler has to be configured.
- Batch-norm running statistics of the backbone, where it has trainable BN, still update in stage 2
  (they are buffers, not trained weights, and track the same images); VGG16 has no BN.
- Their classifier's probabilities come from a head with dropout 0.5 in training mode; the 2-fc head has
  none, so the probabilities here are deterministic. ``p_after`` is recomputed by a gradient-free pass of the
  head over the masked positives rather than read from the training pass (the same values for such a head).
- The Adversarial Spatial Transformer Network (sec. 3.2, rotations of 4 channel groups within +-10
  degrees) is not implemented; the released code has ASDN only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from balancedet.models.asdn import ASDN
from balancedet.models.faster_rcnn import FasterRCNN
from balancedet.models.roi_head import RoITargets

__all__ = ["AFastRCNN", "JOINT_START", "PRETRAIN_START", "STAGE_ITERATIONS"]

#: The authors' iterations per stage on VOC 2007: ``fast_rcnn_std.sh`` (10000), ``fast_rcnn_adv_pretrain.sh``
#: (25000), ``fast_rcnn_adv.sh`` (40000).
STAGE_ITERATIONS = (10_000, 25_000, 40_000)
PRETRAIN_START = STAGE_ITERATIONS[0] / sum(STAGE_ITERATIONS)
JOINT_START = (STAGE_ITERATIONS[0] + STAGE_ITERATIONS[1]) / sum(STAGE_ITERATIONS)


class AFastRCNN(FasterRCNN):
    """Faster R-CNN + FPN with an ASDN adversary on the positive RoIs' pooled features.

    Args:
        num_classes, backbone, neck, **kwargs: ``FasterRCNN``'s.
        adversary: an ``ASDN`` on the neck's channels and the box head's pool size; default
            ``ASDN(neck.out_channels, 7)`` with the authors' settings.
        pretrain_start, joint_start: the training fractions at which stage 2 (ASDN pre-training, detector
            fixed) and stage 3 (joint training) begin; default 10/75 and 35/75, the authors' iterations.

    ``forward`` as ``FasterRCNN``'s; training adds ``loss_asdn`` to the loss dict.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: nn.Module | int = 50,
        neck: nn.Module | None = None,
        *,
        adversary: ASDN | None = None,
        pretrain_start: float = PRETRAIN_START,
        joint_start: float = JOINT_START,
        **kwargs,
    ):
        super().__init__(num_classes, backbone, neck, **kwargs)
        if not 0.0 <= pretrain_start <= joint_start <= 1.0:
            raise ValueError(
                f"AFastRCNN: need 0 <= pretrain_start <= joint_start <= 1, got {pretrain_start}, {joint_start}"
            )
        pool_size = self.roi_head.box_head.pool_size
        if adversary is None:
            adversary = ASDN(self.neck.out_channels, pool_size)
        in_channels = adversary.layers[0].in_channels
        if adversary.pool_size != pool_size or in_channels != self.neck.out_channels:
            raise ValueError(
                f"AFastRCNN: the adversary takes {in_channels} x {adversary.pool_size}^2 features, the RoI head "
                f"pools {self.neck.out_channels} x {pool_size}^2"
            )
        self.adversary = adversary
        self.pretrain_start, self.joint_start = float(pretrain_start), float(joint_start)
        self.progress = 0.0
        self.roi_head.feature_transform = self.adversarial_features

    @property
    def stage(self) -> int:
        """1 (detector only), 2 (ASDN pre-training, detector fixed) or 3 (joint), by ``progress``."""
        if self.progress < self.pretrain_start:
            return 1
        return 2 if self.progress < self.joint_start else 3

    def set_progress(self, fraction: float) -> None:
        """How far training has gone (``step / total``): the criteria's schedules and the stage."""
        super().set_progress(fraction)
        self.progress = min(max(float(fraction), 0.0), 1.0)

    def forward(
        self, images: Tensor | Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        if self.training and self.stage == 2:
            # the detector is fixed while ASDN pre-trains: no graph through it at all (its losses are
            # only logged); ASDN's loss builds its own graph inside ``adversarial_features``
            with torch.no_grad():
                return super().forward(images, targets)
        return super().forward(images, targets)

    def classify(self, features: Tensor) -> Tensor:
        """The box head's class logits ``(N, K + 1)`` of pooled ``features (N, C, d, d)``."""
        return self.roi_head.box_head(features)[0]

    def adversarial_features(
        self, pooled: Tensor, targets: RoITargets, rows: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The RoI head's ``feature_transform``: the features the box head trains on and ``loss_asdn``.

        ``pooled (N, C, d, d)`` are the RoIs at ``rows (B, R)`` in row-major order; a positive is a row with
        a foreground label (``targets.labels > 0``), the authors' ``labels > 0``.
        """
        stage = self.stage
        if stage == 1:
            return pooled, {"loss_asdn": pooled.new_zeros(())}
        labels = targets.labels[rows]
        positive = labels > 0
        if stage == 2:
            with torch.enable_grad():
                loss = self.adversary.pretrain_loss(pooled[positive], labels[positive], self.classify)
            return pooled, {"loss_asdn": loss}
        image = rows.nonzero()[:, 0]
        chosen = positive & self.adversary.masked_images(rows.shape[0])[image]
        dropped, loss = self.adversary.joint_step(pooled[chosen], labels[chosen], self.classify, pooled.shape[0])
        keep = torch.ones((pooled.shape[0], *pooled.shape[-2:]), dtype=torch.bool, device=pooled.device)
        keep[chosen] = ~dropped
        # a constant mask: the detector's gradient reaches the backbone at the kept cells and never ASDN
        return pooled * keep[:, None].to(pooled.dtype), {"loss_asdn": loss}
