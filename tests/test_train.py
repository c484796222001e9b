"""The main job end to end on scikit-learn's digits: outputs, cache, resume and errors."""

import ast
import csv
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from PIL import Image

import mln_tf
from mln_tf.__main__ import build_parser, config_from_args, default_out_dir, main
from mln_tf.train import PRESETS, TrainConfig

DIGITS = ["--dataset", "digits", "--noise", "pair", "--rate", "0.45", "--meta-size", "100",
          "--batch-size", "32", "--deterministic"]  # fmt: skip
# Learning rate 0.05 for epochs 1-2, then 0.02: checks the schedule on the way.
FULL = [*DIGITS, "--warmup-epochs", "1", "--meta-epochs", "3", "--learning-rate", "0.05", "0.02",
        "--lr-boundaries", "2", "--baselines", "--with-clean-reference"]  # fmt: skip
METHODS = {"cross_entropy", "meta_label_net", "symmetric_cross_entropy",
           "generalized_cross_entropy", "soft_bootstrapping", "forward_correction",
           "clean_reference"}  # fmt: skip


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("MLN_TF_CACHE_DIR")
    os.environ["MLN_TF_CACHE_DIR"] = str(path)
    yield path
    if previous is None:
        del os.environ["MLN_TF_CACHE_DIR"]
    else:
        os.environ["MLN_TF_CACHE_DIR"] = previous


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("runs") / "uninterrupted"
    main(["train", *FULL, "--out", str(out)])
    return out


def _results(out):
    return json.loads((out / "results.json").read_text())


def _history(out):
    with open(out / "history.csv") as f:
        return list(csv.DictReader(f))


def test_main_job_writes_its_files_and_reports_real_accuracies(finished_run):
    out = finished_run
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == "digits" and config["rate"] == 0.45 and config["meta_epochs"] == 3
    results = _results(out)
    assert set(results["methods"]) == METHODS
    assert results["model_selection"] == "best accuracy on the clean meta set"
    rows = _history(out)
    assert [(r["method"], r["epoch"]) for r in rows[:4]] == [
        ("warm_up", "1"), ("cross_entropy", "2"), ("cross_entropy", "3"), ("cross_entropy", "4"),
    ]  # fmt: skip
    assert [r["epoch"] for r in rows if r["method"] == "clean_reference"] == ["1", "2", "3", "4"]

    # The reported final test accuracy is the saved model's, measured again here.
    data = mln_tf.data.load_noisy("digits", noise="pair", rate=0.45, meta_size=100, seed=0)
    model = keras.models.load_model(out / "meta_label_net.keras")
    logits = model.predict(data.test_images, verbose=0)
    accuracy = np.mean(np.argmax(logits, axis=1) == data.test_labels)
    mln = results["methods"]["meta_label_net"]
    assert mln["test_accuracy_final"] == pytest.approx(accuracy, abs=1e-6)
    # The classifier's optimizer continued from the warm-up and was saved with the model.
    steps_per_epoch = data.split.train_indices.size // 32
    assert int(model.optimizer.iterations) == 4 * steps_per_epoch
    assert results["noise_rate"] == pytest.approx(data.noise_rate)

    # Selection: the epoch of the best meta accuracy, read back from the history.
    mln_rows = [r for r in rows if r["method"] == "meta_label_net"]
    best = max(mln_rows, key=lambda r: float(r["meta_accuracy"]))
    assert mln["best_epoch"] == int(best["epoch"])
    assert mln["test_accuracy_best_on_meta"] == pytest.approx(float(best["test_accuracy"]))

    report = (out / "report.md").read_text()
    assert (
        f"| MetaLabelNet | {100 * mln['test_accuracy_best_on_meta']:.2f} | "
        f"{mln['best_epoch']} | {100 * mln['test_accuracy_final']:.2f} |"
    ) in report
    assert "| cross-entropy on the true labels (reference) |" in report
    assert "the epoch with the best accuracy on the clean meta set" in report
    assert (
        "MetaLabelNet: the authors' algorithm, except entropy_weight=0.0, virtual_scope='head', "
        "label_input=True, label_trust=5.0, generator_init='classifier_head', "
        "loss_scale='sum_over_classes', label_loss='cross_entropy'." in report
    )


def test_learning_rate_follows_the_schedule(finished_run):
    rates = {(r["method"], r["epoch"]): float(r["learning_rate"]) for r in _history(finished_run)}
    assert rates[("warm_up", "1")] == pytest.approx(0.05)
    assert rates[("cross_entropy", "2")] == pytest.approx(0.05)
    assert rates[("meta_label_net", "3")] == pytest.approx(0.02)
    assert rates[("clean_reference", "4")] == pytest.approx(0.02)


def test_label_correction_is_measured_on_the_wrong_labels(finished_run):
    correction = _results(finished_run)["label_correction"]
    assert correction["epochs"] == [1, 2, 3, 4]
    # Recompute the last value from the saved generator and extractor.
    data = mln_tf.data.load_noisy("digits", noise="pair", rate=0.45, meta_size=100, seed=0)
    model = keras.models.load_model(finished_run / "meta_label_net.keras")
    wrong = ~data.train_label_is_correct
    soft_labels = model.predict_soft_labels(
        data.train_images[wrong], data.train_noisy_labels[wrong]
    )
    expected = np.mean(np.argmax(soft_labels, axis=1) == data.train_clean_labels[wrong])
    assert correction["fraction"][-1] == pytest.approx(expected, abs=1e-6)


def test_plots_are_written(finished_run):
    for name in ("test_accuracy.png", "confusion_matrix.png", "label_correction.png"):
        with Image.open(finished_run / name) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
            # Not a blank canvas.
            assert len(set(image.convert("L").getdata())) > 10


def test_confusion_matrix_counts_the_selected_epoch(finished_run):
    results = _results(finished_run)
    epoch = results["methods"]["cross_entropy"]["best_epoch"]
    predictions = np.load(finished_run / "stages" / "cross_entropy" /
                          f"test_predictions_epoch{epoch}.npy")  # fmt: skip
    data = mln_tf.data.load_noisy("digits", noise="pair", rate=0.45, meta_size=100, seed=0)
    accuracy = np.mean(predictions == data.test_labels)
    assert accuracy == pytest.approx(results["methods"]["cross_entropy"]
                                     ["test_accuracy_best_on_meta"])  # fmt: skip


def test_warm_up_is_cached_and_shared(finished_run, tmp_path, cache_dir):
    # Stage 2 longer: the warm-up's settings are the same, so it comes from the cache.
    out = tmp_path / "longer"
    main(["train", *DIGITS, "--warmup-epochs", "1", "--meta-epochs", "1", "--learning-rate", "0.05",
          "0.02", "--lr-boundaries", "2", "--out", str(out)])  # fmt: skip
    results = _results(out)
    assert results["warm_up"]["cached"] is True
    assert _results(finished_run)["warm_up"]["cached"] is False
    assert results["warm_up"]["test_accuracy"] == _results(finished_run)["warm_up"]["test_accuracy"]
    # Same warm-up and batch order: the first stage-2 epoch of cross-entropy is identical.
    first = {r["method"]: r for r in _history(finished_run) if r["epoch"] == "2"}
    again = {r["method"]: r for r in _history(out) if r["epoch"] == "2"}
    assert again["cross_entropy"]["test_accuracy"] == first["cross_entropy"]["test_accuracy"]
    assert "(reused from the cache)" in (out / "report.md").read_text()


def test_a_killed_run_resumes_to_the_uninterrupted_result(finished_run, tmp_path, cache_dir):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "mln_tf", "train", *FULL, "--out", str(out)]
    state = out / "stages" / "meta_label_net" / "state.json"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "MLN_TF_CACHE_DIR": str(cache_dir)})  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not state.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    # Killed in the middle of MetaLabelNet's stage 2.
    assert json.loads(state.read_text())["epoch"] < 4
    assert not (out / "results.json").exists()

    main(["train", *FULL, "--out", str(out)])
    resumed, uninterrupted = _results(out), _results(finished_run)
    for method in METHODS:
        for key in ("test_accuracy_best_on_meta", "best_epoch", "test_accuracy_final"):
            assert resumed["methods"][method][key] == uninterrupted["methods"][method][key]
    weights = keras.models.load_model(out / "meta_label_net.keras").get_weights()
    expected = keras.models.load_model(finished_run / "meta_label_net.keras").get_weights()
    for got, want in zip(weights, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_run_directory_keeps_its_settings(finished_run, capsys):
    with pytest.raises(SystemExit):
        main(["train", *DIGITS, "--warmup-epochs", "1", "--meta-epochs", "3", "--out",
              str(finished_run)])
    message = capsys.readouterr().err
    assert "holds a run with other settings (they differ in: baselines, clean_reference" in message


def test_presets_hold_the_papers_hyper_parameters():
    config = config_from_args(build_parser().parse_args(["train", "--preset", "cifar10"]))
    assert (config.architecture, config.batch_size, config.warmup_epochs, config.last_epoch) == (
        "cifar10_cnn", 128, 44, 120
    )  # fmt: skip
    assert (config.dataset, config.label_set, config.noise) == ("cifar10_n", "worse", "human")
    assert [config.learning_rate(epoch) for epoch in (0, 39, 40, 79, 80, 119)] == [
        1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4
    ]  # fmt: skip
    assert (config.options.generator_learning_rate, config.meta_size) == (1e-2, 5000)
    assert config.options.replace(generator_learning_rate=1e-3) == mln_tf.options.PAPER
    assert set(PRESETS) == {"paper", "cifar10"}
    digits = TrainConfig.from_preset("cifar10", dataset="digits", noise="symmetric",
                                     label_set=None)  # fmt: skip
    assert (digits.meta_size, digits.options.virtual_lr) == (5000, 1.0)


def test_the_old_stage_flags_still_work_with_a_note(capsys):
    args = build_parser().parse_args(["train", "--stage1", "2", "--stage2", "7"])
    config = config_from_args(args)
    assert (config.warmup_epochs, config.meta_epochs) == (2, 5)
    assert "--stage1 is deprecated: use --warmup-epochs and --meta-epochs" in (
        capsys.readouterr().err
    )
    assert config_from_args(build_parser().parse_args(["train", "--epochs", "4"])).meta_epochs == 1
    with pytest.warns(DeprecationWarning, match="use `warmup_epochs`"):
        assert TrainConfig.from_settings(stage1=1, stage2=3).meta_epochs == 2


def test_options_reach_the_config_by_name_and_flag():
    args = build_parser().parse_args(
        ["train", "--label-trust", "10", "--no-label-input", "--virtual-scope", "all",
         "--generator-lr", "0.01"]
    )  # fmt: skip
    options = config_from_args(args).options
    assert (options.label_trust, options.label_input, options.virtual_scope) == (10.0, False, "all")
    assert options.generator_learning_rate == 0.01
    assert options.label_loss == mln_tf.options.RECOMMENDED.label_loss  # unset: the default
    with pytest.raises(TypeError, match="Unknown setting\\(s\\): label_truth"):
        TrainConfig.from_settings(label_truth=3.0)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--dataset", "digits", "--label-set", "aggre"], "'digits' has synthetic noise"),
        (["--dataset", "cifar10_n", "--label-set", "best"],
         "Received: label_set='best'. Expected one of cifar10_n's"),
        (["--dataset", "digits", "--noise", "gaussian"], "gaussian"),
        (["--dataset", "digits", "--rate", "1.0"], "Received: rate=1.0"),
        (["--dataset", "digits", "--rate", "-0.1"], "Received: rate=-0.1"),
        (["--dataset", "digits", "--meta-size", "5"], "at least the number of classes, 10"),
        (["--dataset", "digits", "--meta-size", "5000"], "Expected at most the size of the clean"),
        (["--warmup-epochs", "-1"], "Received: warmup_epochs=-1. Expected an integer of at"),
        (["--meta-epochs", "0"], "Received: meta_epochs=0. Expected an integer of at least 1"),
        (["--stage1", "3", "--stage2", "3"], "Received: 3, with 3 warm-up epochs"),
        (["--epochs", "5", "--stage2", "6"], "epochs=5 and stage2=6 disagree"),
        (["--label-trust", "-1"], "Received: label_trust=-1.0. Expected a non-negative float"),
        (["--learning-rate", "0.1", "0.01"], "Expected increasing boundaries and one more rate"),
    ],
)
def test_command_line_errors_name_the_problem(options, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *options, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("mln-tf train: error: ")
    assert message in error


def test_command_line_reports_an_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "digits", "--out", str(blocker / "out")])
    assert "Cannot write to the output directory" in capsys.readouterr().err


def test_command_line_reports_a_missing_dataset_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "mln-tf train: error: Fashion-MNIST files not found" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_without_out_the_latest_unfinished_run_with_the_same_settings_resumes(tmp_path):
    config = TrainConfig(dataset="digits", noise="symmetric", rate=0.2)
    settings = json.loads(json.dumps(dataclasses.asdict(config)))
    other = {**settings, "rate": 0.3}
    for name, folder_settings, finished in [
        ("20260101-000000", settings, False),
        ("20260102-000000", settings, True),
        ("20260103-000000", other, False),
    ]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(folder_settings))
        if finished:
            (folder / "results.json").write_text("{}")
    assert default_out_dir(config, tmp_path) == str(tmp_path / "20260101-000000")
    fresh = default_out_dir(TrainConfig(dataset="digits", noise="pair", rate=0.2), tmp_path)
    assert os.path.dirname(fresh) == str(tmp_path) and not os.path.exists(fresh)


def test_main_job_trains_under_a_mirrored_strategy(tmp_path):
    out = tmp_path / "mirrored"
    # A fresh process: the CPU can be split into logical devices only before TF starts.
    completed = subprocess.run(
        [sys.executable, "-m", "mln_tf", "train", *DIGITS, "--warmup-epochs", "1",
         "--meta-epochs", "1", "--strategy", "mirrored", "--devices", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "MLN_TF_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert (config["strategy"], config["devices"]) == ("mirrored", 2)
    results = _results(out)
    data = mln_tf.data.load_noisy("digits", noise="pair", rate=0.45, meta_size=100, seed=0)
    model = keras.models.load_model(out / "meta_label_net.keras")
    accuracy = np.mean(np.argmax(model.predict(data.test_images, verbose=0), 1) == data.test_labels)
    assert results["methods"]["meta_label_net"]["test_accuracy_final"] == pytest.approx(accuracy)


def test_train_config_docstring_states_the_real_defaults():
    doc = TrainConfig.__doc__
    for field in dataclasses.fields(TrainConfig):
        entry = re.search(rf"^ {{8}}{field.name}: (.*?)(?=^ {{8}}\w+: |\Z)", doc, re.S | re.M)
        assert entry, f"TrainConfig's docstring does not describe {field.name!r}"
        stated = re.search(r"Defaults to `?(.+?)`?(?: \(|\.$|, )", " ".join(entry[1].split()))
        assert stated, f"TrainConfig's docstring gives no default for {field.name!r}"
        if field.name == "options":  # not a literal
            assert stated[1] == "mln_tf.options.RECOMMENDED"
            assert field.default is mln_tf.options.RECOMMENDED
            continue
        assert ast.literal_eval(stated[1]) == field.default, field.name
