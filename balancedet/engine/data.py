"""The configured dataset as the engine reads it: one split builder, the loaders, the batch order.

``load_split`` is the only place a configuration's ``data`` section becomes a dataset (training,
``balancedet eval`` and the training run's evaluations all go through it); ``make_transform`` is
the only place it becomes the resize that ``balancedet predict`` applies too.

The training batches are a function of (seed, epoch) and each image's augmentation a function of
(seed, epoch, index), so a resumed run sees the very batches the interrupted one would have. In a run
of several processes (docs/distributed.md) ``train.batch_size`` is the global batch: each batch is the
single-process one and rank ``r`` loads its ``r``-th part (``shard``), whatever the number of processes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from balancedet.data import DataSpec, DetectionCollate, DetectionDataset, DetectionTransform, load_data_spec
from balancedet.data.dataset import build_dataset


def make_transform(data: dict[str, Any], train: bool) -> DetectionTransform:
    """The resize (and, when ``train``, the random flip) of a config's ``data`` section."""
    return DetectionTransform(train=train, min_size=data["min_size"], max_size=data["max_size"], flip_prob=data["flip"])


def load_split(config: dict[str, Any], split: str, train: bool, spec: DataSpec | None = None) -> DetectionDataset:
    """Split ``split`` of the configured dataset (``spec``, if already loaded) with its transforms."""
    data = config["data"]
    # bad images are found here, before training, or replaced as met in a large training split
    return build_dataset(
        spec or load_data_spec(data["dataset"]),
        split,
        train=train,
        min_size=data["min_size"],
        max_size=data["max_size"],
        flip_prob=data["flip"],
        skip_bad=data["skip_bad"],
        cache=data.get("cache", "auto"),  # a run saved before the key existed: its default
    )


def make_collate(config: dict[str, Any]) -> DetectionCollate:
    return DetectionCollate(config["data"]["size_divisible"])


def eval_loader(dataset: Dataset, config: dict[str, Any]) -> DataLoader:
    """The dataset in order, in training-sized batches."""
    train = config["train"]
    return DataLoader(
        dataset,
        batch_size=train["batch_size"],
        shuffle=False,
        num_workers=train["workers"],
        collate_fn=make_collate(config),
    )


class SeededView(Dataset):
    """Items ``(epoch, index)``: each image's random augmentation is drawn from its own seed, so it
    does not depend on worker processes, batch composition or where a resumed run restarted."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed also queues the CUDA seeds and costs 17x more per image
            torch.default_generator.manual_seed((self.seed * 1_000_003 + epoch * 10_007 + index) % (2**63))
            return self.dataset[index]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """The batches of one epoch: a permutation drawn from (seed, epoch), the last partial batch
    dropped when there is more than one batch (batch norm dislikes a batch of one)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return [[(epoch, i) for i in b] for b in batches]


def check_shards(batch_size: int, world: int, num_images: int | None = None) -> None:
    """``train.batch_size`` is the global batch: ``world`` processes need equal parts of it, none empty
    (nor a part of a training split of ``num_images``, when given, smaller than one batch)."""
    if batch_size % world:
        raise ValueError(
            f"train.batch_size={batch_size} is the global batch of the {world} processes: it must be a multiple "
            f"of {world} (each process takes batch_size / {world} images)"
        )
    if num_images is not None and num_images < world:
        raise ValueError(f"the training split has {num_images} images: too few for {world} processes")


def shard(batch: list[Any], rank: int, world: int) -> list[Any]:
    """Rank ``rank``'s part of a global ``batch``: the ``rank``-th of ``world`` contiguous parts (equal
    when ``world`` divides the batch), so the parts in rank order are the batch itself."""
    return batch[len(batch) * rank // world : len(batch) * (rank + 1) // world]


def epoch_loader(dataset: Dataset, config: dict[str, Any], epoch: int, skip: int) -> DataLoader:
    """Epoch ``epoch``'s training batches from its ``skip``-th on (a resumed run skips those done); in an
    initialised process group, this rank's ``shard`` of each (the rank and size as torch's
    ``DistributedSampler`` takes them)."""
    train = config["train"]
    batches = epoch_batches(len(dataset), train["batch_size"], train["seed"], epoch)[skip:]
    if dist.is_available() and dist.is_initialized():
        batches = [shard(b, dist.get_rank(), dist.get_world_size()) for b in batches]
    view = SeededView(dataset, train["seed"])
    return DataLoader(view, batch_sampler=batches, num_workers=train["workers"], collate_fn=make_collate(config))
