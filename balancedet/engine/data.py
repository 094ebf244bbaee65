"""The configured dataset as the engine reads it: one split builder, the loaders, the batch order.

``load_split`` is the only place a configuration's ``data`` section becomes a dataset (training,
``balancedet eval`` and the training run's evaluations all go through it); ``make_transform`` is
the only place it becomes the resize that ``balancedet predict`` applies too.

The training batches are a function of (seed, epoch) and each image's augmentation a function of
(seed, epoch, index), so a resumed run sees the very batches the interrupted one would have.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from balancedet.data import DataSpec, DetectionCollate, DetectionDataset, DetectionTransform, load_data_spec


def make_transform(data: dict[str, Any], train: bool) -> DetectionTransform:
    """The resize (and, when ``train``, the random flip) of a config's ``data`` section."""
    return DetectionTransform(train=train, min_size=data["min_size"], max_size=data["max_size"], flip_prob=data["flip"])


def load_split(config: dict[str, Any], split: str, train: bool, spec: DataSpec | None = None) -> DetectionDataset:
    """Split ``split`` of the configured dataset (``spec``, if already loaded) with its transforms."""
    data = config["data"]
    spec = spec or load_data_spec(data["dataset"])
    records = spec.load(split, skip_bad=data["skip_bad"])
    return DetectionDataset.from_record_set(records, make_transform(data, train))


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
            torch.manual_seed((self.seed * 1_000_003 + epoch * 10_007 + index) % (2**63))
            return self.dataset[index]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[tuple[int, int]]]:
    """The batches of one epoch: a permutation drawn from (seed, epoch), the last partial batch
    dropped when there is more than one batch (batch norm dislikes a batch of one)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return [[(epoch, i) for i in b] for b in batches]


def epoch_loader(dataset: Dataset, config: dict[str, Any], epoch: int, skip: int) -> DataLoader:
    """Epoch ``epoch``'s training batches from its ``skip``-th on (a resumed run skips those done)."""
    train = config["train"]
    batches = epoch_batches(len(dataset), train["batch_size"], train["seed"], epoch)[skip:]
    view = SeededView(dataset, train["seed"])
    return DataLoader(view, batch_sampler=batches, num_workers=train["workers"], collate_fn=make_collate(config))
