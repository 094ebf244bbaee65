"""Assigners: which anchors are positive, negative or ignored (docs/conventions.md)."""

from balancedet.assign.atss import ATSSAssigner
from balancedet.assign.max_iou import MaxIoUAssigner
from balancedet.assign.result import BACKGROUND, IGNORE, AssignResult

__all__ = ["BACKGROUND", "IGNORE", "ATSSAssigner", "AssignResult", "MaxIoUAssigner"]
