"""Adapters that plug balancedet's losses into other libraries' detectors."""

from balancedet.integrations.torchvision import use_balancedet_loss

__all__ = ["use_balancedet_loss"]
