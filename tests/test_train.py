"""The main job end to end, on scikit-learn's digits."""

import csv
import json

import keras
import numpy as np
import pytest

import mln_tf
from mln_tf.__main__ import main
from mln_tf.train import TrainConfig


def test_main_job_writes_its_files_and_reports_real_accuracies(tmp_path):
    out = tmp_path / "run"
    main(["train", "--dataset", "digits", "--noise", "symmetric", "--rate", "0.4",
          "--meta-size", "100", "--stage1", "1", "--stage2", "3", "--batch-size", "32",
          "--out", str(out)])  # fmt: skip

    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "digits" and config["rate"] == 0.4 and config["stage2"] == 3
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"cross_entropy", "meta_label_net"}
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["epoch"]) for r in rows] == [
        ("cross_entropy", "2"), ("cross_entropy", "3"),
        ("meta_label_net", "2"), ("meta_label_net", "3"),
    ]  # fmt: skip

    # The reported final test accuracy is the saved model's, measured again here.
    data = mln_tf.data.load_noisy("digits", noise="symmetric", rate=0.4, meta_size=100, seed=0)
    model = keras.models.load_model(out / "meta_label_net.keras")
    logits = model.predict(data.test_images, verbose=0)
    accuracy = np.mean(np.argmax(logits, axis=1) == data.test_labels)
    final = results["methods"]["meta_label_net"]["test_accuracy_final"]
    assert final == pytest.approx(accuracy, abs=1e-6)
    assert float(rows[-1]["test_accuracy"]) == pytest.approx(accuracy, abs=1e-5)
    assert results["noise_rate"] == pytest.approx(data.noise_rate)

    report = (out / "report.md").read_text()
    mln = results["methods"]["meta_label_net"]
    row = (
        f"| meta_label_net | {100 * mln['test_accuracy_best_on_meta']:.2f} | "
        f"{mln['best_epoch']} | {100 * final:.2f} |"
    )
    assert row in report
    assert "best accuracy on the clean meta set" in report


def test_stages_must_be_ordered():
    with pytest.raises(ValueError, match="Received: stage1=3, stage2=3. Expected 0 <= stage1"):
        TrainConfig(stage1=3, stage2=3)


def test_command_line_reports_a_missing_dataset_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "mln-tf train: error: Fashion-MNIST files not found" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_command_line_reports_an_unknown_noise(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "digits", "--noise", "gaussian", "--out", str(tmp_path)])
    assert "gaussian" in capsys.readouterr().err
