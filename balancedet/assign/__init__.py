"""Assigners: which anchors are positive, negative or ignored (shared/SPEC.md section 3)."""

from balancedet.assign.atss import ATSSAssigner
from balancedet.assign.max_iou import MaxIoUAssigner
from balancedet.assign.result import BACKGROUND, IGNORE, AssignResult

__all__ = ["BACKGROUND", "IGNORE", "ATSSAssigner", "AssignResult", "MaxIoUAssigner"]
