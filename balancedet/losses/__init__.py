"""Losses that remedy imbalance, exact to their papers (see shared/SPEC.md sections 1 and 2)."""
