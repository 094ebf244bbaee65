"""SIGKILL, not an exception: ``balancedet train`` in a child process is killed in the middle of a step,
and twice in the middle of writing ``last.pt`` (at an epoch's end and within an epoch); each time
``last.pt`` loads, and the run resumed after the last kill ends with weights, optimiser state and
``results.csv`` rows equal bit for bit to those of a run that was never interrupted.

The kills must land where they are meant to, so the child runs a small driver (``DRIVER``) that prints
``step N`` after each step (after the checkpoint of that step is written), and whose ``torch.save``, for
one chosen step's ``last.pt``, writes half of the bytes, flushes them, prints ``writing N`` and waits: the
kill then finds a half-written temporary file beside the previous ``last.pt``, as a kill during a long
write on a slow disk would. The library is not changed for the test.

The children run with one thread and without compiled loss kernels: every child then computes the same
bits (the reference run included) and none pays for a compilation; the compiled kernels' resume is
``tests/engine/test_train.py``'s.
"""

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from balancedet.engine.checkpoint import load_checkpoint

DRIVER = """
import io, json, sys, time
import torch
from balancedet.engine.callbacks import Callback
from balancedet.engine.train import train

config_file, output, resume, stall = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

class Announce(Callback):
    def on_step_end(self, state):
        print(f"step {state.step}", flush=True)

save = torch.save

def stalling_save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and "optimizer" in obj and obj["step"] == stall:
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        print(f"writing {stall}", flush=True)
        time.sleep(600)
    return save(obj, f, *args, **kwargs)

torch.save = stalling_save
if resume == "-":
    train(json.load(open(config_file)), output=output, callbacks=[Announce()], verbose=False)
else:
    train(None, resume=resume, callbacks=[Announce()], verbose=False)
print("done", flush=True)
"""

TIMEOUT = 300.0  # seconds a child may take to reach a line (a loaded 2-core host)


def start(config_file: Path, output: Path, resume: Path | None = None, stall: int = 0) -> subprocess.Popen:
    """The driver in a child process: a new run into ``output``, or ``resume``; ``stall``: the step whose
    ``last.pt`` write stops halfway (0: none). Its stderr goes to ``child.log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BALANCEDET_COMPILE": "never"}
    argv = [sys.executable, "-c", DRIVER, str(config_file), str(output), str(resume or "-"), str(stall)]
    log = output.parent / f"{output.name}-{'resume' if resume else 'new'}-{stall}.log"
    with log.open("w") as handle:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=handle, text=True, env=env)
    child.log = log
    return child


def wait_for(child: subprocess.Popen, line: str) -> None:
    """Read the child's lines until ``line``; fail with its stderr if it ends or hangs first."""
    deadline = time.monotonic() + TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([child.stdout], [], [], left)[0]:
            break
        got = child.stdout.readline()
        if got == "":  # the child ended
            break
        if got.strip() == line:
            return
    child.kill()
    child.wait()
    raise AssertionError(f"the child never printed {line!r}; its stderr ends:\n{child.log.read_text()[-3000:]}")


def kill(child: subprocess.Popen) -> None:
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    child.stdout.close()


def temporaries(run: Path) -> list[Path]:
    return sorted((run / "weights").glob(".last.pt.*.tmp"))


def without_time(rows):
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def test_kills_anywhere_resume_to_the_uninterrupted_bits(tiny_config, tmp_path):
    config = tiny_config("train.epochs=2", "train.checkpoint_interval=1")  # last.pt after every step
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    run, last = tmp_path / "killed", tmp_path / "killed" / "weights" / "last.pt"
    reference = start(config_file, tmp_path / "reference")  # alongside: the host has two cores

    # 1. in the middle of a step: the first step's last.pt is written, the second step is under way
    child = start(config_file, run)
    wait_for(child, "step 1")
    kill(child)
    assert load_checkpoint(last)["step"] in (1, 2)

    # 2. in the middle of writing the epoch's last.pt (step 3, after its evaluation and results.csv row)
    child = start(config_file, run, resume=last, stall=3)
    wait_for(child, "writing 3")
    [partial] = temporaries(run)
    assert 0 < partial.stat().st_size < last.stat().st_size
    kill(child)
    killed = load_checkpoint(last)
    assert (killed["step"], killed["rows"]) == (2, [])

    # 3. in the middle of writing a step's last.pt within the second epoch
    child = start(config_file, run, resume=last, stall=5)
    wait_for(child, "writing 5")
    kill(child)
    killed = load_checkpoint(last)
    assert (killed["step"], [row["epoch"] for row in killed["rows"]]) == (4, [1])
    assert len(temporaries(run)) == 1  # this write's; the previous one was removed when this run started

    child = start(config_file, run, resume=last)
    for finishing in (child, reference):
        wait_for(finishing, "done")
        assert finishing.wait() == 0
        finishing.stdout.close()

    assert temporaries(run) == []
    want, got = load_checkpoint(tmp_path / "reference" / "weights" / "last.pt"), load_checkpoint(last)
    assert want["step"] == got["step"] == 6
    for key, value in want["model"].items():
        assert torch.equal(value, got["model"][key]), key
    for index, state in want["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, got["optimizer"]["state"][index][name]), (index, name)
    assert without_time(want["rows"]) == without_time(got["rows"])
    assert (tmp_path / "reference" / "metrics.json").read_text() == (run / "metrics.json").read_text()
