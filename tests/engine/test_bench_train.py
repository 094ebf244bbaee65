"""``balancedet bench train``: one run, evaluated at wall-time marks whose cost is not charged to it."""

from balancedet.bench import train as bench_train
from balancedet.engine.checkpoint import load_checkpoint
from tests.engine.conftest import TINY_RUN


def test_marks_evaluate_on_the_way_and_the_table_has_a_row_each(tiny_data, tmp_path, capsys):
    overrides = [f"data.dataset={tiny_data}", *TINY_RUN, "train.epochs=2"]
    argv = ["--config", "retinanet_digits", "--marks", "0.001", "--output", str(tmp_path / "run")]
    for text in overrides:
        argv += ["--set", text]
    assert bench_train.main(argv) == 0
    out = capsys.readouterr().out
    table = out[out.index("mark  ") :].splitlines()
    assert table[0].split() == ["mark", "wall", "s", "step", "AP", "AP50", "AP75"]
    assert table[2].split()[0:2] == ["0.001", "s"]  # the 0.001 s mark, passed at the first step
    assert table[2].split()[3] == "1"
    assert table[3].startswith("end")
    last = load_checkpoint(tmp_path / "run" / "weights" / "last.pt")
    assert table[3].split()[2] == str(last["step"])
