"""Seeing imbalance: who dominates a detector's loss, and what each remedy does to it."""
