"""Data-parallel training (balancedet.engine.distributed): 2 gloo processes on the CPU train as 1 process.

``train.batch_size`` is the global batch, so 2 processes x ``b / 2`` images must give the weights of 1
process x ``b`` (the focal loss normalised by the batch's positives, GHM-C/R with the global batch's histogram,
DDP's averaged gradients; ``sync_bn``
statistics over both processes are tested on the layer). The processes are started as torchrun starts them (environment
variables, a free port on 127.0.0.1), by ``torch.multiprocessing`` and by ``balancedet train --nproc 2``.
"""

import datetime
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from balancedet.engine.checkpoint import load_checkpoint
from balancedet.engine.config import load_config
from balancedet.engine.data import check_shards, epoch_batches, shard
from balancedet.engine.distributed import CPUSyncBatchNorm
from balancedet.engine.evaluate import evaluate_checkpoint
from balancedet.engine.train import train
from tests.engine.conftest import TINY_RUN
from tests.engine.test_train import KillAfter, Killed

WORLD = 2
#: 24 training images in 3 batches of 8: each process takes 4 images a step. SGD (linear in the gradient:
#: AdamW's first steps are about lr * sign(g), which float summation order can flip where g ~ 0). Frozen BN
#: makes the two runs comparable to 1e-5: with sync_bn they agreed to 2.5e-5 (backbone.layer1.0.conv1.weight
#: after 3 steps; batch statistics over 4 + 4 images amplify the summation order), and the sync_bn layer is
#: checked on its own against BatchNorm over both processes' images
#: (test_cpu_sync_batch_norm_is_batch_norm_over_every_process_images).
DDP_RUN = [
    "model.norm=frozen_bn",
    "train.optimizer=sgd",
    "train.lr=0.01",
    "train.epochs=1",
    "train.checkpoint_interval=1",
]
#: within 1e-5 of the tensor's norm: the two runs add the same numbers in another order
RELATIVE = 1e-5
TIMEOUT = 240  # seconds for a group of processes; a run takes well under a minute


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_env(rank: int, port: int) -> None:
    """The variables torchrun gives each of its processes."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(WORLD),
    )


def run_ranks(fn, *args) -> None:
    """``fn(rank, *args)`` in ``WORLD`` spawned processes; fails on a process's error or a hang."""
    context = mp.start_processes(fn, args=args, nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.terminate()
            pytest.fail(f"{WORLD} processes still running after {TIMEOUT} s")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / a.norm().clamp(min=1e-12))


def assert_same_model(expected: dict, actual: dict, relative: float = RELATIVE) -> None:
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        if value.is_floating_point():
            assert relative_error(value, actual[key]) <= relative, key
        else:
            assert torch.equal(value, actual[key]), key  # num_batches_tracked


@pytest.fixture(scope="module")
def ddp_config(tiny_data):
    return load_config("retinanet_digits", [f"data.dataset={tiny_data}", *TINY_RUN, *DDP_RUN])


@pytest.fixture(scope="module")
def one_process(ddp_config, tmp_path_factory):
    """The reference: the same configuration trained by one process on the whole batches."""
    out = train(ddp_config, output=tmp_path_factory.mktemp("one") / "run", verbose=False)["output"]
    return load_checkpoint(out / "weights" / "last.pt")


#: GHM-C and GHM-R: the gradient density must be the global batch's, and their self-normalised losses
#: scaled for DDP's average (balancedet.engine.build._distributed)
GHM_RUN = ["model.cls_loss=ghmc", "model.box_loss=ghmr"]
#: Measured: with the global histogram the two runs differ by 1.02e-5 at most (neck.fpn.lateral.0.bias, a
#: near-zero bias: an element whose |p - y| lies on a bin edge can change bin with the summation order);
#: with each process's own histogram and loss weight (what the builder did before) by 6.5e-4
#: (backbone.layer1.0.conv1.weight).
GHM_RELATIVE = 5e-5


@pytest.fixture(scope="module")
def ghm_config(tiny_data):
    return load_config("retinanet_digits", [f"data.dataset={tiny_data}", *TINY_RUN, *DDP_RUN, *GHM_RUN])


@pytest.fixture(scope="module")
def one_process_ghm(ghm_config, tmp_path_factory):
    out = train(ghm_config, output=tmp_path_factory.mktemp("one_ghm") / "run", verbose=False)["output"]
    return load_checkpoint(out / "weights" / "last.pt")


def test_each_batch_is_split_into_disjoint_parts_that_make_the_single_process_batch():
    for world in (1, 2, 3, 4):
        for batch in epoch_batches(50, 12, seed=3, epoch=1):
            parts = [shard(batch, rank, world) for rank in range(world)]
            assert [len(p) for p in parts] == [12 // world] * world
            assert sum(parts, []) == batch
    with pytest.raises(ValueError, match="train.batch_size=10 is the global batch of the 4 processes"):
        check_shards(10, 4, 100)
    with pytest.raises(ValueError, match="3 images: too few for 4 processes"):
        check_shards(8, 4, 3)


def norm_data() -> dict:
    """Two steps of 8 images (4 per process), the gradient reaching the norm's output, its affine parameters."""
    generator = torch.Generator().manual_seed(0)
    return {
        "inputs": [torch.randn(8, 3, 5, 6, generator=generator) * 2 + 1 for _ in range(2)],
        "upstream": torch.randn(8, 3, 5, 6, generator=generator),
        "weight": torch.rand(3, generator=generator) + 0.5,
        "bias": torch.randn(3, generator=generator),
    }


def sync_norm_steps(rank: int, data: dict) -> dict:
    """``CPUSyncBatchNorm`` on this rank's 4 images of each step: outputs, input and parameter gradients."""
    part = slice(rank * 4, rank * 4 + 4)
    norm = CPUSyncBatchNorm.like(nn.SyncBatchNorm(3, momentum=0.3))
    with torch.no_grad():
        norm.weight.copy_(data["weight"])
        norm.bias.copy_(data["bias"])
    outputs, grads, params = [], [], []
    for x in data["inputs"]:
        norm.zero_grad()
        x = x[part].clone().requires_grad_(True)
        y = norm(x)
        (y * data["upstream"][part]).sum().backward()
        outputs.append(y.detach())
        grads.append(x.grad)
        # what DDP would reduce: the sum over the ranks is the summed loss's parameter gradient
        param_grad = torch.cat([norm.weight.grad, norm.bias.grad])
        dist.all_reduce(param_grad)
        params.append(param_grad)
    return {"outputs": outputs, "grads": grads, "params": params, "mean": norm.running_mean, "var": norm.running_var}


def _worker(rank: int, port: int, config: dict, ghm_config: dict, folder: str) -> None:
    """One group of processes for every check (starting one costs seconds): the sync norm's steps, the
    training run killed after step 2 (mid-epoch) and resumed, with each rank's random states, and a run
    with GHM-C + GHM-R."""
    torchrun_env(rank, port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=TIMEOUT))

    class RandomState(KillAfter):
        def on_train_start(self, state):
            self.restored = torch.get_rng_state()

    try:
        torch.save(sync_norm_steps(rank, norm_data()), f"{folder}/norm{rank}.pt")
        try:
            train(config, output=f"{folder}/ddp", callbacks=[KillAfter(2)], verbose=False)
        except Killed:
            killed_state = torch.get_rng_state()
        probe = RandomState(step=-1)
        train(None, resume=f"{folder}/ddp/weights/last.pt", callbacks=[probe], verbose=False)
        torch.save({"killed": killed_state, "restored": probe.restored}, f"{folder}/rng{rank}.pt")
        train(ghm_config, output=f"{folder}/ghm", verbose=False)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(ddp_config, ghm_config, tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    run_ranks(_worker, free_port(), ddp_config, ghm_config, str(folder))
    return folder


def test_cpu_sync_batch_norm_is_batch_norm_over_every_process_images(two_processes):
    data = norm_data()
    # torch's batch norm in one process over the 8 images, with the loss summed over them
    reference = nn.BatchNorm2d(3, momentum=0.3)
    with torch.no_grad():
        reference.weight.copy_(data["weight"])
        reference.bias.copy_(data["bias"])
    outputs, grads, params = [], [], []
    for x in data["inputs"]:
        reference.zero_grad()
        x = x.clone().requires_grad_(True)
        y = reference(x)
        (y * data["upstream"]).sum().backward()
        outputs.append(y.detach())
        grads.append(x.grad)
        params.append(torch.cat([reference.weight.grad, reference.bias.grad]))
    ranks = [torch.load(two_processes / f"norm{r}.pt") for r in range(WORLD)]
    for step in range(2):
        torch.testing.assert_close(torch.cat([r["outputs"][step] for r in ranks]), outputs[step])
        torch.testing.assert_close(torch.cat([r["grads"][step] for r in ranks]), grads[step])
        for r in ranks:
            torch.testing.assert_close(r["params"][step], params[step])
    # the running statistics after two steps: momentum 0.3, the unbiased variance
    for r in ranks:
        torch.testing.assert_close(r["mean"], reference.running_mean)
        torch.testing.assert_close(r["var"], reference.running_var)


def test_two_processes_killed_and_resumed_give_the_weights_of_one_process(one_process, two_processes):
    resumed = load_checkpoint(two_processes / "ddp" / "weights" / "last.pt")
    assert resumed["step"] == one_process["step"] == 3
    assert_same_model(one_process["model"], resumed["model"])
    # the logged losses are the whole batch's: the mean of the ranks' losses
    for key in ("loss_cls", "loss_box"):
        assert resumed["rows"][0][key] == pytest.approx(one_process["rows"][0][key], rel=RELATIVE)
    # each rank restored its own random stream, the one it had when the checkpoint was written
    states = [torch.load(two_processes / f"rng{r}.pt") for r in range(WORLD)]
    assert all(torch.equal(s["killed"], s["restored"]) for s in states)
    assert not torch.equal(states[0]["killed"], states[1]["killed"])
    assert len(resumed["rng_ranks"]) == WORLD


def test_ghm_in_two_processes_trains_as_in_one(one_process_ghm, two_processes):
    two = load_checkpoint(two_processes / "ghm" / "weights" / "last.pt")
    assert two["step"] == one_process_ghm["step"] == 3
    assert_same_model(one_process_ghm["model"], two["model"], GHM_RELATIVE)
    for key in ("loss_cls", "loss_box"):
        assert two["rows"][0][key] == pytest.approx(one_process_ghm["rows"][0][key], rel=GHM_RELATIVE)


def test_train_nproc_2_writes_one_run_folder_with_the_metrics_of_one_process(
    tiny_data, ddp_config, one_process, tmp_path
):
    overrides = [f"--set={o}" for o in [*TINY_RUN, *DDP_RUN]]
    command = [sys.executable, "-m", "balancedet", "train", "--nproc", "2", "--data", tiny_data]
    command += ["--config", "retinanet_digits", *overrides, "--output", str(tmp_path / "runs" / "exp")]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # --nproc shares the CPUs out
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    # rank 0 alone writes: one folder, one event file, one copy of the summary
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["exp"]
    run = tmp_path / "runs" / "exp"
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert done.stdout.count("results in ") == 1
    for name in ("args.yaml", "results.csv", "metrics.json", "PR_curve.png", "weights/best.pt", "weights/last.pt"):
        assert (run / name).is_file(), name
    assert_same_model(one_process["model"], load_checkpoint(run / "weights" / "last.pt")["model"])
    # the sharded evaluation's metrics are those of evaluating the same weights in one process
    single = evaluate_checkpoint(str(run / "weights" / "last.pt"), output=str(tmp_path / "eval"))["metrics"]
    written = json.loads((run / "metrics.json").read_text())
    assert written == {k: (v if v == v else None) for k, v in single.items()}
