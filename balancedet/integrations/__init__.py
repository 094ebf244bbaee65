"""Adapters that plug balancedet's losses and samplers into other libraries' detectors: torchvision's
RetinaNet (``use_balancedet_loss``) and Faster R-CNN RoI heads (``BalancedRoIHeads``,
``use_balancedet_roi_heads``)."""

from balancedet.integrations.torchvision import BalancedRoIHeads, use_balancedet_loss, use_balancedet_roi_heads

__all__ = ["BalancedRoIHeads", "use_balancedet_loss", "use_balancedet_roi_heads"]
