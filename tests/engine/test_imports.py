"""The engine's modules form no cycle: evaluation and prediction do not need the trainer."""

import subprocess
import sys


def test_evaluate_and_predict_do_not_import_the_trainer():
    # one fresh interpreter per module would cost a torch import each (seconds on a small CI machine)
    code = (
        "import sys\n"
        "import balancedet.engine.evaluate\n"
        "assert 'balancedet.engine.train' not in sys.modules, 'evaluate imports train'\n"
        "import balancedet.engine.predict\n"
        "assert 'balancedet.engine.train' not in sys.modules, 'predict imports train'\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
