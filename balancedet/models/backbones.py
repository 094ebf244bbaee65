"""ResNet backbones that return the C3, C4, C5 feature maps an FPN needs.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (arXiv 1512.03385), as built
by ``torchvision.models.resnet{18,34,50,101}`` without the pooling and the classifier. RetinaNet
(Lin et al., ICCV 2017, arXiv 1708.02002, sec. 4) reads C3-C5 (strides 8, 16, 32) and, fine-tuning
ImageNet weights, freezes the batch-norm statistics and the first stage (Detectron's
``FREEZE_AT = 2``, mmdetection's ``frozen_stages = 1``).

Normalisation (``balancedet.models.norms``): ``"frozen_bn"`` (fixed statistics, the paper's choice
with pretrained weights: batches of 2 images per GPU make batch statistics useless), ``"bn"``
(trainable, sensible from scratch), ``"gn"`` (pretrained BN statistics do not transfer to it: only
the affine parameters load) or ``"sync_bn"``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torchvision
from torch import Tensor, nn

from balancedet.models.norms import check_norm, norm_layer

__all__ = ["ResNetBackbone"]

_DEPTHS = (18, 34, 50, 101)
_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _load_state_dict(depth: int, weights: str) -> Mapping[str, Tensor]:
    """A local checkpoint (a path) or a torchvision weight name such as ``"IMAGENET1K_V1"`` (downloads)."""
    if os.path.exists(weights):
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, Mapping):
            raise ValueError(f"ResNetBackbone: {weights} holds a {type(state).__name__}, not a state dict")
        return state
    enum = torchvision.models.get_model_weights(f"resnet{depth}")
    try:
        entry = enum[weights]
    except KeyError:
        names = ", ".join(e.name for e in enum)
        raise ValueError(
            f"ResNetBackbone: weights {weights!r} is neither a file nor a torchvision weight of resnet{depth} ({names})"
        ) from None
    # torch.hub's default for a download is weights_only=False: a tampered file could run code
    return entry.get_state_dict(progress=False, weights_only=True, check_hash=True)


class ResNetBackbone(nn.Module):
    """torchvision's ResNet-18/34/50/101 trunk returning ``[C3, C4, C5]``.

    Args:
        depth: 18, 34, 50 or 101.
        weights: ``None`` (random initialisation, no download), a path to a local state dict
            (torchvision key names, an optional ``"state_dict"`` wrapper; ``fc.*`` is ignored), or a
            torchvision weight name (``"IMAGENET1K_V1"``; needs the network the first time).
        norm: ``"frozen_bn"`` | ``"bn"`` | ``"gn"`` | ``"sync_bn"`` (see the module docstring).
        frozen_stages: ``-1`` trains everything; ``0`` freezes the stem (conv1 + its norm); ``k >= 1``
            also freezes ``layer1 .. layer k`` (mmdetection's convention; 1 is Detectron's
            ``FREEZE_AT = 2``). Frozen stages get no gradient and their norms stay in eval mode.

        levels: which maps to return, ``k`` meaning ``C_k`` at stride ``2^k``: ``(3, 4, 5)`` for
            RetinaNet/GFL (P3-P7), ``(2, 3, 4, 5)`` for a Faster R-CNN FPN (P2-P6).

    ``forward(x: (B, 3, H, W)) -> [C3 (B, c3, H/8, W/8), C4 (.., H/16, ..), C5 (.., H/32, ..)]`` (for
    the default ``levels``) with ``out_channels`` ``[128, 256, 512]`` (18/34) or ``[512, 1024, 2048]``
    (50/101), C2 having ``64`` or ``256``; sizes round up. ``strides`` lists ``2^k`` per map.
    """

    def __init__(
        self,
        depth: int = 50,
        weights: str | None = None,
        norm: str = "frozen_bn",
        frozen_stages: int = 1,
        levels: tuple[int, ...] = (3, 4, 5),
    ):
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"ResNetBackbone: depth must be one of {_DEPTHS}, got {depth!r}")
        check_norm(norm, "ResNetBackbone", allow_none=False)
        levels = tuple(int(k) for k in levels)
        if not levels or list(levels) != sorted(set(levels)) or not set(levels) <= {2, 3, 4, 5}:
            raise ValueError(f"ResNetBackbone: levels must be increasing values among 2, 3, 4, 5, got {levels!r}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"ResNetBackbone: frozen_stages must lie in [-1, 4], got {frozen_stages!r}")
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None, norm_layer=norm_layer(norm))
        # Same attribute names as torchvision's ResNet, so its state dicts load as they are.
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.depth, self.norm, self.frozen_stages = depth, norm, frozen_stages
        expansion = 1 if depth < 50 else 4
        self.levels = levels
        self.out_channels = [(64 * expansion) * 2 ** (k - 2) for k in levels]
        self.strides = [2**k for k in levels]
        if weights is not None:
            self.load_weights(weights)
        for module in self._frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)

    def load_weights(self, weights: str) -> None:
        """Load ``weights`` (a path or a torchvision weight name); the classifier's keys are dropped."""
        state = {k: v for k, v in _load_state_dict(self.depth, weights).items() if not k.startswith("fc.")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if self.norm == "gn":
            # GroupNorm has no running statistics: the BN buffers of the checkpoint are expected extras.
            stats = ("running_mean", "running_var", "num_batches_tracked")
            unexpected = [k for k in unexpected if not k.endswith(stats)]
        if missing or unexpected:
            raise ValueError(
                f"ResNetBackbone: weights {weights!r} do not fit resnet{self.depth}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        stem: list[nn.Module] = [self.conv1, self.bn1]
        return stem + [getattr(self, name) for name in _STAGES[: self.frozen_stages]]

    def train(self, mode: bool = True) -> ResNetBackbone:
        """As ``nn.Module.train``, but frozen stages keep their norms in eval mode (no statistics update)."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = {2: self.layer1(x)}
        maps[3] = self.layer2(maps[2])
        maps[4] = self.layer3(maps[3])
        maps[5] = self.layer4(maps[4])
        return [maps[k] for k in self.levels]
