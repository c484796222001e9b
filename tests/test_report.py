"""The main job's history table."""

import csv

from mln_tf import report


def test_history_has_one_row_per_method_and_epoch_warm_up_first(tmp_path):
    path = tmp_path / "history.csv"
    warm_up = {"epoch": [1], "loss": [2.0], "test_accuracy": [0.123456789]}
    histories = {
        "cross_entropy": {"epoch": [2, 3], "loss": [1.5, 1.25], "test_accuracy": [0.5, 0.75]},
        "meta_label_net": {"epoch": [2], "meta_loss": [0.001234567], "test_accuracy": [1.0]},
    }

    report.write_history(path, warm_up, histories)

    assert path.read_text() == (
        "method,epoch,loss,meta_loss,test_accuracy\n"
        "warm_up,1,2,,0.123457\n"
        "cross_entropy,2,1.5,,0.5\n"
        "cross_entropy,3,1.25,,0.75\n"
        "meta_label_net,2,,0.00123457,1\n"
    )


def test_history_quotes_a_name_with_a_comma(tmp_path):
    path = tmp_path / "history.csv"

    report.write_history(path, {}, {"a,b": {"epoch": [1], "loss": [0.5]}})

    assert path.read_text() == 'method,epoch,loss\n"a,b",1,0.5\n'
    with open(path, newline="") as f:
        assert list(csv.DictReader(f)) == [{"method": "a,b", "epoch": "1", "loss": "0.5"}]


def test_importing_mln_tf_leaves_the_matplotlib_backend_alone():
    # A notebook's inline plots must survive `import mln_tf` (the report draws on Figures).
    import os
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import mln_tf; "
            "print(matplotlib.get_backend())")  # fmt: skip
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=environment, check=True)  # fmt: skip
    assert result.stdout.strip().splitlines()[-1] == "svg"
