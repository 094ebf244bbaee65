"""Data-parallel training over several processes, as ``torchrun`` starts them (docs/distributed.md).

One process per device (``torchrun --nproc-per-node N -m balancedet train ...``, or ``balancedet train
--nproc N``, which starts the same through ``torch.distributed.run``). The processes join the group that
torchrun's environment describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``): gloo
for CPU tensors, NCCL for CUDA ones (Li et al., "PyTorch Distributed: Experiences on Accelerating Data
Parallel Training", VLDB 2020, arXiv 2006.15704).

What a run of ``W`` processes shares, so that it trains as one process on the whole batch:

- ``train.batch_size`` is the *global* batch (detectron2's ``SOLVER.IMS_PER_BATCH``, ultralytics'
  ``batch``): each step's batch is that of a single-process run, and rank ``r`` takes its ``r``-th
  contiguous ``batch_size / W`` images (``balancedet.engine.data.shard``). The learning rate and the
  schedule keep their meaning whatever ``W`` is, and a run resumes exactly with another ``W`` too.
- DDP averages the gradients of the ranks. The dense detectors' normaliser sums the positives across
  the ranks and divides by ``W`` (``balancedet.models.normalizer``), so each rank's loss is its share
  of the batch's loss times ``W`` and the averaged gradient is the single-process one.
- ``norm: sync_bn`` takes the batch statistics over all ranks (MegDet, Peng et al., CVPR 2018, arXiv
  1711.07240): with it (or ``frozen_bn``/``gn``) ``W`` processes give the weights of one. torch's
  ``SyncBatchNorm`` runs on CUDA only; on the CPU ``CPUSyncBatchNorm`` does the same over gloo.
- Rank 0 decides and writes: the run folder, logs, plots, checkpoints (holding every rank's random
  state) and the time budget's plan, which ``share_plan`` gives the other ranks after each hook.
- Evaluation is sharded by whole validation batches, the batches of a single-process evaluation, and
  gathered on rank 0 (``evaluate_sharded``): the metrics are those of one process.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from balancedet.data import DetectionDataset
from balancedet.engine.checkpoint import rng_state, set_rng_state
from balancedet.engine.data import make_collate
from balancedet.engine.evaluate import coco_evaluate, coco_results, evaluate_model, predict_loader

if TYPE_CHECKING:
    from balancedet.engine.callbacks import TrainState

#: Whether this module initialised the process group (and so destroys it in ``close``).
_owned_group = False


def get_world_size() -> int:
    """Processes in the run: the initialised group's size, else 1."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_rank() -> int:
    """This process's rank in the initialised group, else 0."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes (rank 0); before the group is joined, what torchrun's ``RANK`` says."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def local_rank() -> int:
    """This process's index on its node (torchrun's ``LOCAL_RANK``): the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0")) if get_world_size() > 1 else 0


def torchrun_processes() -> int | None:
    """How many processes torchrun started on this node (``LOCAL_WORLD_SIZE``), None outside torchrun."""
    value = os.environ.get("LOCAL_WORLD_SIZE")
    return None if value is None else int(value)


def init_process_group(device: torch.device) -> torch.device:
    """Join the group torchrun's environment describes (when ``WORLD_SIZE > 1``) and return this
    process's device: ``cuda:LOCAL_RANK`` for a CUDA run, ``device`` otherwise.

    gloo carries CPU tensors, NCCL CUDA ones. A group the caller initialised is used as it is.
    """
    global _owned_group
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_initialized() and world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _owned_group = True
    if get_world_size() > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    return device


def close() -> None:
    """Leave the process group if ``init_process_group`` created it."""
    global _owned_group
    if _owned_group and dist.is_initialized():
        dist.destroy_process_group()
    _owned_group = False


def launch(nproc: int, argv: list[str]) -> int:
    """``torchrun --standalone --nproc-per-node nproc -m balancedet <argv>`` on this machine; the
    exit status (1 when a process failed: torchrun has printed which and why).

    Without ``OMP_NUM_THREADS`` set, each process gets an equal share of this process's CPUs
    (torchrun's own default is 1 thread, which leaves cores idle when they outnumber the processes).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if "OMP_NUM_THREADS" not in os.environ:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        os.environ["OMP_NUM_THREADS"] = str(max(1, cpus // nproc))
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "balancedet"])
    # set after parsing: torchrun's parser would take ``--nproc`` for an abbreviation of its own option
    args.training_script_args = list(argv)
    try:
        run(args)
    except ChildFailedError:
        return 1
    return 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def local_main_first() -> Iterator[None]:
    """The body runs on each node's local rank 0 first, then on the node's other ranks: a dataset is
    generated (the digits) or read into a cache once per node. The cache is written atomically, so
    nodes sharing a filesystem may generate it at the same time."""
    first = local_rank() == 0
    if not first:
        barrier()
    try:
        yield
    finally:
        # reached on an error too: the other ranks then meet the same error instead of waiting
        if first:
            barrier()


def main_value(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def seed_rank(seed: int) -> None:
    """Give each rank its own Python, NumPy and torch random streams (a random sampler on rank 1 must
    not repeat rank 0's draws); the model was built from ``seed`` on every rank before, and DDP gives
    every rank rank 0's weights anyway. A single process keeps its stream."""
    if get_world_size() == 1:
        return
    rank_seed = seed * 1_000_003 + get_rank()
    random.seed(rank_seed)
    np.random.seed(rank_seed % 2**32)
    torch.manual_seed(rank_seed)


def wrap(model: nn.Module, device: torch.device, find_unused_parameters: bool) -> nn.Module | None:
    """``DistributedDataParallel`` around ``model`` (which keeps its own state dict), or None in a
    single process. Wrapping copies rank 0's parameters and buffers to every rank."""
    if get_world_size() == 1:
        return None
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def mean_over_ranks(values: dict[str, Tensor]) -> dict[str, float]:
    """``values`` (0-dim tensors) as floats averaged over the ranks: each rank's loss is its share of
    the batch's loss times the world size, so the mean is the loss of the whole batch."""
    stacked = torch.stack([v.detach().float() for v in values.values()])
    if get_world_size() > 1:
        dist.all_reduce(stacked)
        stacked = stacked / get_world_size()
    return dict(zip(values, stacked.tolist(), strict=True))


def share_plan(state: TrainState) -> None:
    """Rank 0's decisions about the run's length (``train.max_time``'s stop, the schedule fitted to it)
    on every rank, so that all ranks take the same number of steps and evaluate at the same ones."""
    if get_world_size() == 1:
        return
    plan = (state.stop, state.total_steps, state.plan_fixed, state.plan_note, state.final_reserve)
    state.stop, state.total_steps, state.plan_fixed, state.plan_note, state.final_reserve = main_value(plan)


def rng_states() -> dict[str, Any]:
    """The checkpoint's random states: ``rng`` (this process's, rank 0's in the file) and, in a run of
    several processes, ``rng_ranks`` (every rank's, in rank order). Every rank must call it."""
    own = rng_state()
    if get_world_size() == 1:
        return {"rng": own}
    states: list[Any] = [None] * get_world_size()
    dist.all_gather_object(states, own)
    return {"rng": own, "rng_ranks": states}


def restore_rng(ckpt: dict[str, Any]) -> None:
    """This rank's random state from a checkpoint of ``rng_states``. Resumed with as many processes, each
    rank continues its own stream; with another number, rank 0 continues the file's ``rng`` and the other
    ranks keep the streams ``seed_rank`` gave them (the batches and augmentations are the same either
    way: only random samplers draw differently)."""
    states = ckpt.get("rng_ranks")
    if states is not None and len(states) == get_world_size():
        set_rng_state(states[get_rank()])
    elif get_rank() == 0:
        set_rng_state(ckpt["rng"])


def evaluate_sharded(
    model: nn.Module, dataset: DetectionDataset, config: dict[str, Any], device: torch.device, amp: torch.dtype | None
) -> tuple[dict[str, Any], list | None]:
    """``evaluate_model`` over the ranks: the validation split in the batches of a single-process
    evaluation (``train.batch_size`` images, in order), batch ``j`` on rank ``j mod W``, the predictions
    gathered on rank 0 in the dataset's order and evaluated there. Every rank gets the report, rank 0
    the predictions (the others None). Identical batches give identical predictions, so the metrics
    are those of one process."""
    world, rank = get_world_size(), get_rank()
    if world == 1:
        return evaluate_model(model, dataset, config, device, amp)
    size, n = config["train"]["batch_size"], len(dataset)
    mine = [list(range(i, min(i + size, n))) for i in range(0, n, size)][rank::world]
    loader = DataLoader(
        dataset, batch_sampler=mine, num_workers=config["train"]["workers"], collate_fn=make_collate(config)
    )
    shard = ([i for batch in mine for i in batch], predict_loader(model, loader, device, amp))
    gathered: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(shard, gathered, dst=0)
    report, predictions = None, None
    if rank == 0:
        by_index = {i: p for indices, preds in gathered for i, p in zip(indices, preds, strict=True)}
        predictions = [by_index[i] for i in range(n)]
        results = coco_results(predictions, dataset.category_ids)
        report = coco_evaluate(dataset.ground_truth(), results, dataset.category_ids)
    return main_value(report), predictions


class AllReduceSum(torch.autograd.Function):
    """``y = sum over the ranks of x``, differentiable: every rank's ``y`` enters its own loss, so the
    gradient of the summed loss with respect to each rank's ``x`` is the sum of the ranks' ``dL/dy``
    (what ``torch.distributed.nn.functional.all_reduce``, now deprecated, did)."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class CPUSyncBatchNorm(_BatchNorm):
    """``nn.SyncBatchNorm`` for CPU tensors: in training, in a group of several processes, the batch
    mean and variance are those of every rank's images together (MegDet's cross-GPU batch norm, arXiv
    1711.07240, sec. 3.3), over gloo. Otherwise (evaluation, one process) it is a plain batch norm.

    torch's raises for a CPU input once a process group exists, and DDP refuses it on the CPU (hence a
    ``_BatchNorm``, not a ``SyncBatchNorm`` subclass). Here the statistics are summed with
    ``AllReduceSum``, whose backward sums the gradient too, so each rank's input gradient is that of the
    loss summed over the ranks, as in torch's CUDA kernel. Mean first, then the centred squares (two
    reductions): the variance of one pass over the whole batch, without the cancellation of ``E[x^2] -
    E[x]^2``. Same parameters and buffers as ``nn.SyncBatchNorm``: checkpoints do not tell them apart.
    """

    def __init__(self, num_features: int, eps: float, momentum: float | None, affine: bool, track: bool, group):
        super().__init__(num_features, eps, momentum, affine, track)
        self.process_group = group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"CPUSyncBatchNorm: expected an input of 2 or more dimensions, got {input.dim()}")

    @classmethod
    def like(cls, norm: nn.SyncBatchNorm) -> CPUSyncBatchNorm:
        """A ``CPUSyncBatchNorm`` sharing ``norm``'s parameters and buffers (an optimiser built on them
        keeps working), in ``norm``'s mode."""
        new = cls(norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats, norm.process_group)
        for name, tensor in [*norm.named_parameters(recurse=False), *norm.named_buffers(recurse=False)]:
            setattr(new, name, tensor)
        return new.train(norm.training)

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and input.device.type == "cpu" and get_world_size() > 1):
            return super().forward(input)
        group = self.process_group or dist.group.WORLD
        self._check_input_dim(input)
        x = input.float()
        dims = [0, *range(2, x.ndim)]
        shape = [1, -1] + [1] * (x.ndim - 2)
        count = x.new_full((1,), x.numel() / x.shape[1])
        sums = AllReduceSum.apply(torch.cat([x.sum(dims), count]), group)
        total = sums[-1]
        mean = sums[:-1] / total
        centred = x - mean.view(shape)
        var = AllReduceSum.apply(centred.square().sum(dims), group) / total
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), factor)
                # the running variance is the unbiased estimate, as in torch's batch norm
                self.running_var.lerp_(var.detach() * total / (total - 1), factor)
        return out.to(input.dtype)


def cpu_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every ``nn.SyncBatchNorm`` (``norm: sync_bn``) replaced, in place, by a
    ``CPUSyncBatchNorm`` sharing its parameters and buffers."""
    for name, child in module.named_children():
        if type(child) is nn.SyncBatchNorm:
            setattr(module, name, CPUSyncBatchNorm.like(child))
        else:
            cpu_sync_batchnorm(child)
    return module
