"""The main job's history table, and the committed example run."""

import csv
import json
import pathlib

import pytest

from mln_tf import report, selection
from mln_tf.train_config import TrainConfig

EXAMPLE_RUN = pathlib.Path(__file__).resolve().parent.parent / "docs" / "example_run"


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


def test_committed_example_run_is_a_default_run_whose_report_follows_its_history():
    settings = json.loads((EXAMPLE_RUN / "config.json").read_text())
    results = json.loads((EXAMPLE_RUN / "results.json").read_text())
    # The main job's defaults: when they change, the example must be run again. (Fields
    # and options added since it ran count at the values that keep its behaviour.)
    settings = TrainConfig.as_now(settings)
    assert settings == TrainConfig().to_dict()
    assert (EXAMPLE_RUN / "report.md").read_text() == report.format_report(
        TrainConfig(**settings), results
    )

    with open(EXAMPLE_RUN / "history.csv") as f:
        rows = list(csv.DictReader(f))
    columns = ("epoch", "validation_accuracy", "test_accuracy", "epoch_seconds")
    histories = {}
    for row in rows:
        history = histories.setdefault(row["method"], {name: [] for name in columns})
        for name in columns:
            history[name].append(float(row[name]))
    selected = selection.select_epochs(histories.pop("warm_up"), histories)
    assert set(selected) == set(results["methods"]) == {"cross_entropy", "meta_label_net"}
    for method, chosen in selected.items():
        recorded = results["methods"][method]
        assert chosen["best_epoch"] == recorded["best_epoch"]
        for name in ("test_accuracy_best_on_validation", "validation_accuracy",
                     "test_accuracy_final"):  # fmt: skip
            assert chosen[name] == pytest.approx(recorded[name], abs=1e-6)
    for name in ("test_accuracy.png", "confusion_matrix.png", "label_correction.png"):
        assert (EXAMPLE_RUN / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
