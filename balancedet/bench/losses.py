"""``balancedet bench losses``: our losses against the implementations people use today.

One run, one process, the same inputs for both sides: a RetinaNet-size problem (by default
N = 153,450 anchors x C = 80 classes, fp32, forward + backward). For each loss it reports our
median time, the baseline's, the speed-up, the bytes each keeps for backward (inputs excluded),
and the largest relative difference of the loss value and of the gradient.

Baselines: ``torchvision.ops.sigmoid_focal_loss`` for the focal loss; for QFL, DFL, GHM-C and
GHM-R the straightforward eager formulations that detection code bases ship (written here from
the papers in that style: QFL with a zero target tensor and a boolean-indexed positive fix-up,
DFL as two cross entropies, GHM with a Python loop over bins and one host sync per bin).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from balancedet.bench.common import format_table, human_bytes, max_relative_difference, saved_bytes, time_call
from balancedet.losses import backend
from balancedet.losses.focal import sigmoid_focal_loss
from balancedet.losses.gfl import distribution_focal_loss, quality_focal_loss
from balancedet.losses.ghm import GHMC, GHMR

# ---- baselines ----------------------------------------------------------------------------------


def baseline_qfl(x: Tensor, labels: Tensor, scores: Tensor, beta: float = 2.0) -> Tensor:
    """QFL as commonly written: every element against a zero target, then positives fixed up."""
    num_classes = x.shape[1]
    sigma = x.sigmoid()
    loss = F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none") * sigma.pow(beta)
    pos = torch.nonzero(labels < num_classes).squeeze(1)
    cls = labels[pos]
    gap = scores[pos] - sigma[pos, cls]
    ce = F.binary_cross_entropy_with_logits(x[pos, cls], scores[pos], reduction="none")
    loss[pos, cls] = ce * gap.abs().pow(beta)
    return loss.sum()


def baseline_dfl(x: Tensor, target: Tensor) -> Tensor:
    """DFL as two cross entropies on the neighbouring bins."""
    left = target.long()
    right = left + 1
    w_left = right.float() - target
    w_right = target - left.float()
    return (
        F.cross_entropy(x, left, reduction="none") * w_left + F.cross_entropy(x, right, reduction="none") * w_right
    ).sum()


def _loop_density_weights(g: Tensor, valid: Tensor, bins: int) -> tuple[Tensor, float]:
    edges = [i / bins for i in range(bins + 1)]
    edges[-1] += 1e-6
    weights = torch.zeros_like(g)
    total = max(valid.float().sum().item(), 1.0)
    nonempty = 0
    for i in range(bins):
        in_bin = (g >= edges[i]) & (g < edges[i + 1]) & valid
        count = in_bin.sum().item()
        if count > 0:
            weights[in_bin] = total / count
            nonempty += 1
    if nonempty > 0:
        weights = weights / nonempty
    return weights, total


def baseline_ghmc(x: Tensor, target: Tensor, bins: int = 30) -> Tensor:
    """GHM-C with a Python loop over bins (one boolean mask and one host sync per bin)."""
    g = (x.detach().sigmoid() - target).abs()
    weights, total = _loop_density_weights(g, torch.ones_like(g, dtype=torch.bool), bins)
    return F.binary_cross_entropy_with_logits(x, target, weights, reduction="sum") / total


def baseline_ghmr(pred: Tensor, target: Tensor, mu: float = 0.02, bins: int = 10) -> Tensor:
    """GHM-R with a Python loop over bins."""
    diff = pred - target
    loss = torch.sqrt(diff * diff + mu * mu) - mu
    g = (diff / torch.sqrt(mu * mu + diff * diff)).abs().detach()
    weights, total = _loop_density_weights(g, torch.ones_like(g, dtype=torch.bool), bins)
    return (loss * weights).sum() / total


# ---- the benchmark ------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    baseline_name: str
    ours: Callable[[Tensor], Tensor]
    baseline: Callable[[Tensor], Tensor]
    make_input: Callable[[], Tensor]
    goal: float


@dataclass
class Result:
    case: Case
    ours_s: float
    ours_first_s: float
    base_s: float
    ours_saved: int
    base_saved: int
    loss_diff: float
    grad_diff: float

    @property
    def ratio(self) -> float:
        return self.base_s / self.ours_s


def build_cases(n: int, c: int, device: torch.device, seed: int = 0) -> list[Case]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    # A dense head after a few iterations: mostly confident negatives, ~1% positives.
    logits = (torch.randn(n, c, generator=gen) * 2.0 - 4.0).to(device)
    labels = torch.full((n,), c, dtype=torch.long)
    pos = torch.rand(n, generator=gen) < 0.01
    labels[pos] = torch.randint(0, c, (int(pos.sum()),), generator=gen)
    labels = labels.to(device)
    onehot = F.one_hot(labels, c + 1)[:, :c].float()
    scores = torch.rand(n, generator=gen).to(device)
    n_dfl = 4 * n
    dfl_logits = torch.randn(n_dfl, 17, generator=gen).to(device)
    dfl_target = (torch.rand(n_dfl, generator=gen) * 15.99).to(device)
    reg_pred = (torch.randn(n, 4, generator=gen) * 0.5).to(device)
    reg_target = (torch.randn(n, 4, generator=gen) * 0.5).to(device)
    ghmc, ghmr = GHMC(bins=30, momentum=0.0).to(device), GHMR(mu=0.02, bins=10, momentum=0.0).to(device)

    def leaf(t: Tensor) -> Callable[[], Tensor]:
        return lambda: t.clone().requires_grad_()

    return [
        Case(
            "sigmoid_focal_loss",
            "torchvision.ops.sigmoid_focal_loss",
            lambda x: sigmoid_focal_loss(x, labels, reduction="sum"),
            lambda x: _torchvision_focal(x, onehot),
            leaf(logits),
            5.0,
        ),
        Case(
            "quality_focal_loss",
            "eager QFL (zero target + fix-up)",
            lambda x: quality_focal_loss(x, labels, scores, reduction="sum"),
            lambda x: baseline_qfl(x, labels, scores),
            leaf(logits),
            2.0,
        ),
        Case(
            f"distribution_focal_loss ({n_dfl}x17)",
            "eager DFL (two cross entropies)",
            lambda x: distribution_focal_loss(x, dfl_target, reduction="sum"),
            lambda x: baseline_dfl(x, dfl_target),
            leaf(dfl_logits),
            2.0,
        ),
        Case(
            "GHMC (30 bins)",
            "GHM-C, Python loop over bins",
            lambda x: ghmc(x, labels),
            lambda x: baseline_ghmc(x, onehot),
            leaf(logits),
            10.0,
        ),
        Case(
            f"GHMR (10 bins, {n}x4)",
            "GHM-R, Python loop over bins",
            lambda x: ghmr(x, reg_target),
            lambda x: baseline_ghmr(x, reg_target),
            leaf(reg_pred),
            0.0,
        ),
    ]


def _torchvision_focal(x: Tensor, onehot: Tensor) -> Tensor:
    from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

    return tv_sigmoid_focal_loss(x, onehot, alpha=0.25, gamma=2.0, reduction="sum")


def run_case(case: Case, device: torch.device, repeat: int, warmup: int) -> Result:
    def fwd_bwd(loss_fn: Callable[[Tensor], Tensor]) -> Callable[[], tuple[Tensor, Tensor]]:
        def step() -> tuple[Tensor, Tensor]:
            x = case.make_input()
            loss = loss_fn(x)
            loss.backward()
            return loss.detach(), x.grad

        return step

    ours_step, base_step = fwd_bwd(case.ours), fwd_bwd(case.baseline)
    ours_s, ours_first = time_call(ours_step, device, repeat, warmup)
    base_s, _ = time_call(base_step, device, repeat, warmup)
    ours_loss, ours_grad = ours_step()
    base_loss, base_grad = base_step()
    x = case.make_input()
    return Result(
        case,
        ours_s,
        ours_first,
        base_s,
        saved_bytes(lambda: case.ours(x), [x]),
        saved_bytes(lambda: case.baseline(x), [x]),
        max_relative_difference(ours_loss, base_loss),
        max_relative_difference(ours_grad, base_grad),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="balancedet bench losses", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=153_450, help="anchors (default: RetinaNet at 800x1333)")
    parser.add_argument("--c", type=int, default=80, help="classes")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--compile", choices=["auto", "always", "never"], default=backend.get_compile(), help="kernel backend"
    )
    parser.add_argument("--only", nargs="*", help="run only the cases whose name contains one of these words")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    backend.set_compile(args.compile)
    compiled = args.compile != "never" and (args.compile == "always" or backend.can_compile(device.type))
    print(
        f"balancedet bench losses: N={args.n} C={args.c} fp32 forward+backward on {device} "
        f"(threads={torch.get_num_threads()}, torch {torch.__version__}, kernels "
        f"{'compiled' if compiled else 'eager'}), median of {args.repeat}"
    )
    rows, met = [], True
    for case in build_cases(args.n, args.c, device):
        if args.only and not any(word in case.name for word in args.only):
            continue
        r = run_case(case, device, args.repeat, args.warmup)
        ok = r.ratio >= case.goal
        met &= ok
        goal = f">= {case.goal:g}x {'met' if ok else 'MISSED'}" if case.goal else "-"
        rows.append(
            [
                case.name,
                f"{r.ours_s * 1e3:.1f}",
                f"{r.ours_first_s * 1e3:.0f}",
                case.baseline_name,
                f"{r.base_s * 1e3:.1f}",
                f"{r.ratio:.1f}x",
                goal,
                human_bytes(r.ours_saved),
                human_bytes(r.base_saved),
                f"{r.loss_diff:.1e}",
                f"{r.grad_diff:.1e}",
            ]
        )
        print(f"  done: {case.name}", flush=True)
    header = [
        "loss",
        "ours ms",
        "1st call ms",
        "baseline",
        "base ms",
        "speed-up",
        "goal",
        "ours saved",
        "base saved",
        "rel diff loss",
        "rel diff grad",
    ]
    print(format_table(header, rows))
    print("all goals met" if met else "some goals missed")
    return 0
