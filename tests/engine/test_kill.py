"""SIGKILL, not an exception: ``balancedet train`` in a child process is killed twice in the middle of
writing ``last.pt`` (within the epoch, and at its end) and once during the evaluation; each time
``last.pt`` loads, and the run resumed after the last kill ends with weights, optimiser state and
``results.csv`` rows equal bit for bit to those of a run that was never interrupted.

The kills must land where they are meant to, so each child (``drive``) reports ``("step", n)`` after
each step (after the checkpoint of that step is written), and its ``torch.save``, for one chosen step's
``last.pt``, writes half of the bytes, flushes them, reports ``("writing", n)`` and waits: the kill then
finds a half-written temporary file beside the previous ``last.pt``, as a kill during a long write on a
slow disk would. The library is not changed for the test.

The children are forked from multiprocessing's fork server, which imports the library once. Each runs
one thread and the eager loss kernels: every child then computes the same bits (the reference run
included) and none pays for a compilation; the compiled kernels' resume is ``tests/engine/test_train.py``'s.
"""

import io
import json
import multiprocessing
import signal
import time
from pathlib import Path

import pytest
import torch

from balancedet.data import load_data_spec
from balancedet.engine.callbacks import Callback
from balancedet.engine.checkpoint import load_checkpoint
from balancedet.engine.train import train
from balancedet.losses import set_compile

CONTEXT = multiprocessing.get_context("forkserver")
TIMEOUT = 300.0  # seconds a child may take to report (a loaded 2-core host)


class Announce(Callback):
    """Reports ``("step", n)`` to the pipe end ``report`` after each step (after the default callbacks:
    the step's ``last.pt`` is written)."""

    def __init__(self, report):
        self.report = report

    def on_step_end(self, state):
        self.report.send(("step", state.step))


def drive(report, config_file: str, output: str, resume: str | None, stall: int) -> None:
    """The child: a new run into ``output``, or ``resume``; ``stall``: the step whose ``last.pt`` write
    stops halfway (0: none). Reports to the pipe end ``report``."""
    torch.set_num_threads(1)
    set_compile("never")
    save = torch.save

    def stalling_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "optimizer" in obj and obj["step"] == stall:
            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            report.send(("writing", stall))
            time.sleep(3600)
        return save(obj, f, *args, **kwargs)

    torch.save = stalling_save  # this child's own module: the fork server's and the tests' keep theirs
    if resume is None:
        train(json.loads(Path(config_file).read_text()), output=output, callbacks=[Announce(report)], verbose=False)
    else:
        train(None, resume=resume, callbacks=[Announce(report)], verbose=False)
    report.send(("done", 0))


@pytest.fixture
def start():
    """``start(config_file, output, resume=None, stall=0)``: ``drive`` in a child process, whose pipe end
    is ``child.reports``. Children still alive at the end (a failed test, a stalled write) are killed."""
    children = []

    def start_child(config_file: Path, output: Path, resume: Path | None = None, stall: int = 0):
        receive, send = CONTEXT.Pipe(duplex=False)
        args = (send, str(config_file), str(output), resume and str(resume), stall)
        child = CONTEXT.Process(target=drive, args=args)
        child.start()
        send.close()
        child.reports = receive
        children.append(child)
        return child

    yield start_child
    for child in children:
        if child.is_alive():
            child.kill()
            child.join()


def wait_for(child, report: tuple[str, int]) -> None:
    """Read the child's reports until ``report``; fail if it ends or hangs first (its traceback is in
    the captured stderr)."""
    deadline = time.monotonic() + TIMEOUT
    try:
        while child.reports.poll(max(0.0, deadline - time.monotonic())):
            if child.reports.recv() == report:
                return
    except EOFError:  # the child ended
        pass
    child.kill()
    child.join()
    raise AssertionError(f"the child never reported {report} (exit code {child.exitcode})")


def kill(child) -> None:
    child.kill()  # SIGKILL
    child.join()
    assert child.exitcode == -signal.SIGKILL
    child.reports.close()


def temporaries(run: Path) -> list[Path]:
    return sorted((run / "weights").glob(".last.pt.*.tmp"))


def without_time(rows):
    return [{k: v for k, v in row.items() if k != "time"} for row in rows]


def test_kills_anywhere_resume_to_the_uninterrupted_bits(tiny_config, tiny_data, tmp_path, start):
    # one epoch of 3 steps, last.pt after every step (the third's after the evaluation and the row)
    config = tiny_config("train.epochs=1", "train.checkpoint_interval=1")
    load_data_spec(tiny_data)  # the digits drawn once, here, not by two children at once
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    CONTEXT.set_forkserver_preload([__name__])  # the library, once (unless another test started the server)
    run, last = tmp_path / "killed", tmp_path / "killed" / "weights" / "last.pt"
    reference = start(config_file, tmp_path / "reference")  # alongside: the host has two cores

    # 1. in the middle of writing the second step's last.pt
    child = start(config_file, run, stall=2)
    wait_for(child, ("writing", 2))
    [partial] = temporaries(run)
    assert 0 < partial.stat().st_size < last.stat().st_size
    kill(child)
    assert load_checkpoint(last)["step"] == 1

    # 2. in the middle of writing the epoch's last.pt, after its evaluation and results.csv row
    child = start(config_file, run, resume=last, stall=3)
    wait_for(child, ("writing", 3))
    assert len((run / "results.csv").read_text().splitlines()) == 2  # the header and the epoch's row
    kill(child)
    killed = load_checkpoint(last)
    assert (killed["step"], killed["rows"]) == (2, [])
    assert len(temporaries(run)) == 1  # this write's; the first one was removed when this run started

    # 3. in the middle of the last step's evaluation (or, on a slow host, after it)
    child = start(config_file, run, resume=last)
    wait_for(child, ("step", 3))
    kill(child)
    assert load_checkpoint(last)["step"] in (2, 3)

    child = start(config_file, run, resume=last)
    for finishing in (child, reference):
        wait_for(finishing, ("done", 0))
        finishing.join()
        assert finishing.exitcode == 0
        finishing.reports.close()

    assert temporaries(run) == []
    want, got = load_checkpoint(tmp_path / "reference" / "weights" / "last.pt"), load_checkpoint(last)
    assert want["step"] == got["step"] == 3
    for key, value in want["model"].items():
        assert torch.equal(value, got["model"][key]), key
    assert want["optimizer"]["state"].keys() == got["optimizer"]["state"].keys()
    for index, state in want["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, got["optimizer"]["state"][index][name]), (index, name)
    # repr-exact floats, and NaN (an empty size range's AP) equal to NaN
    assert json.dumps(without_time(want["rows"])) == json.dumps(without_time(got["rows"]))
    assert (tmp_path / "reference" / "metrics.json").read_text() == (run / "metrics.json").read_text()
