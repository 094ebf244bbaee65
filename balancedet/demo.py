"""``balancedet demo``: what each remedy does to a dense detector's foreground/background imbalance.

It builds the classification output of a dense head part-way through training (100k anchors,
a few dozen positives; most negatives easy, a few hard, positives partly hard) and shows, for
cross entropy, alpha-balanced CE, the focal loss and GHM-C, which share of the total gradient
each kind of example receives: the easy negatives drown CE and are damped by the remedies.
"""

from __future__ import annotations

import math
import time

import torch

from balancedet.bench.common import format_table
from balancedet.losses import GHMC, binary_cross_entropy, sigmoid_focal_loss


def synthetic_head(anchors: int, positives: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(anchors, 1)`` and labels (0 = object, 1 = background) of a half-trained head."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(anchors, 1, generator=gen) * 1.5 - 5.0  # easy negatives, p ~ 0.007
    hard_neg = torch.randperm(anchors, generator=gen)[: anchors // 100]
    logits[hard_neg, 0] = torch.randn(len(hard_neg), generator=gen) * 1.5 + 0.5
    labels = torch.ones(anchors, dtype=torch.long)
    pos = torch.randperm(anchors, generator=gen)[:positives]
    labels[pos] = 0
    logits[pos, 0] = torch.randn(positives, generator=gen) * 2.0 + 1.0
    return logits, labels


def gradient_shares(loss_fn, logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    x = logits.clone().requires_grad_()
    loss_fn(x, labels).backward()
    g = x.grad.abs().squeeze(1)
    p = torch.sigmoid(logits.squeeze(1))
    p_t = torch.where(labels == 0, p, 1 - p)
    groups = [
        (labels == 0) & (p_t > 0.5),
        (labels == 0) & (p_t <= 0.5),
        (labels == 1) & (p_t > 0.5),
        (labels == 1) & (p_t <= 0.5),
    ]
    total = g.sum().clamp_min(1e-30)
    return [float(g[m].sum() / total) for m in groups]


def run_demo(anchors: int = 100_000, positives: int = 50) -> int:
    start = time.perf_counter()
    print("Focal loss paper, worked values (gamma = 2, no alpha):")
    rows = []
    for p in (0.1, 0.5, 0.9, 0.99):
        x = torch.tensor([[math.log(p / (1 - p))]], dtype=torch.float64)
        ce = binary_cross_entropy(x, torch.tensor([0]), reduction="sum").item()
        fl = sigmoid_focal_loss(x, torch.tensor([0]), alpha=None, reduction="sum").item()
        rows.append([f"{p:g}", f"{ce:.4f}", f"{fl:.6f}", f"{ce / fl:.0f}x"])
    print(format_table(["p_t", "CE", "FL", "CE/FL"], rows))

    logits, labels = synthetic_head(anchors, positives)
    counts = [
        int(((labels == 0) & (logits[:, 0] > 0)).sum()),
        int(((labels == 0) & (logits[:, 0] <= 0)).sum()),
        int(((labels == 1) & (logits[:, 0] < 0)).sum()),
        int(((labels == 1) & (logits[:, 0] >= 0)).sum()),
    ]
    ghmc = GHMC(bins=30, momentum=0.0)
    remedies = [
        ("cross entropy", lambda x, y: binary_cross_entropy(x, y, reduction="sum")),
        ("alpha-balanced CE (0.75)", lambda x, y: binary_cross_entropy(x, y, alpha=0.75, reduction="sum")),
        ("focal loss (0.25, 2)", lambda x, y: sigmoid_focal_loss(x, y, reduction="sum")),
        ("GHM-C (30 bins)", lambda x, y: ghmc(x, y)),
    ]
    print(
        f"\nA dense head with {anchors} anchors and {positives} positives "
        f"(easy positives {counts[0]}, hard positives {counts[1]}, easy negatives {counts[2]}, "
        f"hard negatives {counts[3]}): share of the total gradient |dL/dx| by kind of example"
    )
    rows = []
    for name, fn in remedies:
        shares = gradient_shares(fn, logits, labels)
        rows.append([name, *(f"{100 * s:.1f}%" for s in shares)])
    print(format_table(["loss", "easy pos", "hard pos", "easy neg", "hard neg"], rows))
    print(f"\n(done in {time.perf_counter() - start:.1f} s; `balancedet bench losses` times the fast paths)")
    return 0
