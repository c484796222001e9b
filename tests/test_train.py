"""The main job end to end on scikit-learn's digits: outputs, cache, resume and errors."""

import ast
import csv
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import keras
import numpy as np
import pytest
from PIL import Image

import mln_tf
from mln_tf.__main__ import build_parser, config_from_args, default_out_dir, main
from mln_tf.train import PRESETS, TrainConfig

DIGITS = ["--dataset", "digits", "--noise", "pair", "--rate", "0.45", "--meta-size", "100",
          "--validation-size", "100", "--batch-size", "32", "--deterministic"]  # fmt: skip
# Learning rate 0.05 for epochs 1-2, then 0.02: checks the schedule on the way.
FULL = [*DIGITS, "--warmup-epochs", "1", "--meta-epochs", "3", "--learning-rate", "0.05", "0.02",
        "--lr-boundaries", "2", "--baselines", "--with-clean-reference"]  # fmt: skip
METHODS = {"cross_entropy", "meta_label_net", "symmetric_cross_entropy",
           "generalized_cross_entropy", "soft_bootstrapping", "forward_correction",
           "cross_entropy_clean", "gold_loss_correction", "fine_tune", "meta_weight_net",
           "meta_label_net_paper", "clean_reference"}  # fmt: skip


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
    assert results["model_selection"] == "best accuracy on the clean validation split"
    rows = _history(out)
    assert [(r["method"], r["epoch"]) for r in rows[:4]] == [
        ("warm_up", "1"), ("cross_entropy", "2"), ("cross_entropy", "3"), ("cross_entropy", "4"),
    ]  # fmt: skip
    assert [r["epoch"] for r in rows if r["method"] == "clean_reference"] == ["1", "2", "3", "4"]

    # The reported final test accuracy is the saved model's, measured again here.
    data = mln_tf.data.load_noisy("digits", noise="pair", rate=0.45, meta_size=100,
                                  validation_size=100, seed=0)
    model = keras.models.load_model(out / "meta_label_net.keras")
    logits = model.predict(data.test_images, verbose=0)
    accuracy = np.mean(np.argmax(logits, axis=1) == data.test_labels)
    mln = results["methods"]["meta_label_net"]
    assert mln["test_accuracy_final"] == pytest.approx(accuracy, abs=1e-6)
    # The classifier's optimizer continued from the warm-up and was saved with the model.
    steps_per_epoch = data.split.train_indices.size // 32
    assert int(model.optimizer.iterations) == 4 * steps_per_epoch
    assert results["noise_rate"] == pytest.approx(data.noise_rate)

    # The final validation accuracy is the saved model's on the validation images.
    logits = model.classifier.predict(data.validation_images, verbose=0)
    final_rows = {r["method"]: r for r in rows if r["epoch"] == "4"}
    assert float(final_rows["meta_label_net"]["validation_accuracy"]) == pytest.approx(
        np.mean(np.argmax(logits, axis=1) == data.validation_labels), abs=1e-5
    )

    # Selection: for each method, the first epoch of best validation accuracy among the
    # warm-up's last epoch and its own (the reference: its own only), read from the history.
    warm_up = [r for r in rows if r["method"] == "warm_up"]
    for method in METHODS:
        candidates = [r for r in rows if r["method"] == method]
        if method != "clean_reference":
            candidates = [warm_up[-1], *candidates]
        validation = np.array([float(r["validation_accuracy"]) for r in candidates])
        best = candidates[int(np.flatnonzero(validation == validation.max())[0])]
        chosen = results["methods"][method]
        assert chosen["best_epoch"] == int(best["epoch"]), method
        # history.csv keeps 6 significant digits.
        assert chosen["validation_accuracy"] == pytest.approx(
            float(best["validation_accuracy"]), abs=1e-6
        )
        assert chosen["test_accuracy_best_on_validation"] == pytest.approx(
            float(best["test_accuracy"]), abs=1e-6
        )
        assert chosen["test_accuracy_final"] == pytest.approx(
            float(candidates[-1]["test_accuracy"]), abs=1e-6
        )
        assert chosen["final_epoch"] == 4

    report = (out / "report.md").read_text()
    cross_entropy = results["methods"]["cross_entropy"]
    best_difference = (mln["test_accuracy_best_on_validation"]
                       - cross_entropy["test_accuracy_best_on_validation"])  # fmt: skip
    final_difference = mln["test_accuracy_final"] - cross_entropy["test_accuracy_final"]
    assert (
        f"| MetaLabelNet | {100 * mln['test_accuracy_best_on_validation']:.2f} | "
        f"{100 * best_difference:+.2f} | {100 * mln['validation_accuracy']:.2f} | "
        f"{mln['best_epoch']} | {100 * mln['test_accuracy_final']:.2f} | "
        f"{100 * final_difference:+.2f} |"
    ) in report
    assert (
        f"| cross-entropy | {100 * cross_entropy['test_accuracy_best_on_validation']:.2f} | "
        "+0.00 |"
    ) in report
    assert "| cross-entropy on the true labels (reference) |" in report
    assert "the epoch with the best accuracy on the clean validation split" in report
    assert "100 clean meta images, 100 clean validation images" in report
    assert (
        "MetaLabelNet: the authors' algorithm, except entropy_weight=0.0, virtual_scope='head', "
        "label_input=True, label_trust=5.0, generator_init='clean_posterior', "
        "loss_scale='sum_over_classes', label_loss='cross_entropy', clean_weight=1.0." in report
    )


def test_the_report_says_how_the_run_was_made(finished_run):
    import tensorflow as tf

    run = _results(finished_run)["run"]
    assert run["command"].startswith("mln-tf train --dataset digits --noise pair --rate 0.45")
    assert run["versions"] == {"tensorflow": tf.__version__, "keras": keras.__version__,
                               "mln_tf": mln_tf.__version__}  # fmt: skip
    report = (finished_run / "report.md").read_text()
    assert f"Run: `{run['command']}`, {run['date']}; TensorFlow {tf.__version__}" in report


def test_learning_rate_follows_the_schedule(finished_run):
    rows = [r for r in _history(finished_run) if r["method"] != "fine_tune"]  # not scheduled
    rates = {(r["method"], r["epoch"]): float(r["learning_rate"]) for r in rows}
    assert rates[("warm_up", "1")] == pytest.approx(0.05)
    assert rates[("meta_weight_net", "3")] == rates[("gold_loss_correction", "3")] == 0.02
    assert rates[("cross_entropy", "2")] == pytest.approx(0.05)
    assert rates[("meta_label_net", "3")] == pytest.approx(0.02)
    assert rates[("clean_reference", "4")] == pytest.approx(0.02)


def test_fine_tuning_keeps_the_setting_that_is_best_on_validation(finished_run):
    settings = _results(finished_run)["fine_tune"]
    scores = [entry["validation_accuracy"] for entry in settings["grid"]]
    best = settings["grid"][scores.index(max(scores))]
    assert settings["chosen"] == {"epochs": best["epochs"], "learning_rate": best["learning_rate"]}
    assert len(settings["grid"]) == len(mln_tf.clean_baselines.FINE_TUNE_GRID)
    fine_tuned = [r for r in _history(finished_run) if r["method"] == "fine_tune"]
    assert [r["epoch"] for r in fine_tuned] == ["4"]
    assert float(fine_tuned[0]["validation_accuracy"]) == pytest.approx(max(scores), abs=1e-6)
    # Its row of the report has no time per epoch on the noisy set.
    row = [line for line in (finished_run / "report.md").read_text().splitlines()
           if line.startswith("| cross-entropy, then fine-tuned on the meta set |")]  # fmt: skip
    assert len(row) == 1 and row[0].endswith("| — |")


def test_label_correction_is_measured_both_ways(finished_run):
    correction = _results(finished_run)["label_correction"]
    assert correction["epochs"] == [1, 2, 3, 4]
    # Recompute the last values from the saved generator and extractor.
    data = mln_tf.data.load_noisy("digits", noise="pair", rate=0.45, meta_size=100,
                                  validation_size=100, seed=0)
    model = keras.models.load_model(finished_run / "meta_label_net.keras")
    wrong = ~data.train_label_is_correct
    soft_labels = model.predict_soft_labels(
        data.train_images[wrong], data.train_noisy_labels[wrong]
    )
    expected = np.mean(np.argmax(soft_labels, axis=1) == data.train_clean_labels[wrong])
    assert correction["fraction"][-1] == pytest.approx(expected, abs=1e-6)
    # Right labels broken: measured on a sample of as many right labels as wrong ones.
    right = np.flatnonzero(data.train_label_is_correct)
    sample = np.random.default_rng(0).choice(right, size=min(len(right), wrong.sum()),
                                             replace=False)  # fmt: skip
    soft_labels = model.predict_soft_labels(
        data.train_images[sample], data.train_noisy_labels[sample]
    )
    expected = np.mean(np.argmax(soft_labels, axis=1) != data.train_clean_labels[sample])
    assert correction["broken"][-1] == pytest.approx(expected, abs=1e-6)
    report = (finished_run / "report.md").read_text()
    assert f"it moves {100 * expected:.1f} % away from their label" in report


def test_plots_are_written(finished_run):
    for name in ("test_accuracy.png", "confusion_matrix.png", "label_correction.png"):
        with Image.open(finished_run / name) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
            # Not a blank canvas.
            assert len(set(image.convert("L").getdata())) > 10


def test_confusion_matrix_counts_the_selected_epoch(finished_run):
    results = _results(finished_run)
    epoch = results["methods"]["cross_entropy"]["best_epoch"]
    stage = "warm_up" if epoch == 1 else "cross_entropy"
    predictions = np.load(finished_run / "stages" / stage /
                          f"test_predictions_epoch{epoch}.npy")  # fmt: skip
    data = mln_tf.data.load_noisy("digits", noise="pair", rate=0.45, meta_size=100,
                                  validation_size=100, seed=0)
    accuracy = np.mean(predictions == data.test_labels)
    assert accuracy == pytest.approx(results["methods"]["cross_entropy"]
                                     ["test_accuracy_best_on_validation"])  # fmt: skip


def test_a_selected_warm_up_epoch_uses_the_warm_ups_predictions(finished_run):
    # The warm-up's test predictions are kept: its last epoch is every method's candidate.
    results = _results(finished_run)
    data = mln_tf.data.load_noisy("digits", noise="pair", rate=0.45, meta_size=100,
                                  validation_size=100, seed=0)  # fmt: skip
    predictions = np.load(finished_run / "stages" / "warm_up" / "test_predictions_epoch1.npy")
    assert np.mean(predictions == data.test_labels) == pytest.approx(
        results["warm_up"]["test_accuracy"]
    )
    session = types.SimpleNamespace(
        out_dir=str(finished_run), config=TrainConfig(dataset="digits", warmup_epochs=1),
        data=data,
    )  # fmt: skip
    chosen = {"methods": {"meta_label_net": {"best_epoch": 1}}}
    matrix = mln_tf.train._confusion_matrix(
        session, "meta_label_net", chosen, str(finished_run / "stages" / "warm_up")
    )
    expected = np.zeros((10, 10), np.int64)
    np.add.at(expected, (data.test_labels, predictions), 1)
    np.testing.assert_array_equal(matrix, expected)


def test_select_epochs_includes_the_warm_up_and_can_stop_early():
    warm_up = {"epoch": [1, 2], "validation_accuracy": [0.5, 0.8], "test_accuracy": [0.4, 0.7]}
    histories = {
        "cross_entropy": {"epoch": [3, 4, 5], "validation_accuracy": [0.6, 0.8, 0.9],
                          "test_accuracy": [0.5, 0.75, 0.6], "epoch_seconds": [1, 2, 3]},
        "clean_reference": {"epoch": [1, 2, 3], "validation_accuracy": [0.1, 0.3, 0.2],
                            "test_accuracy": [0.1, 0.35, 0.25], "epoch_seconds": [4, 4, 4]},
    }  # fmt: skip
    selected = mln_tf.selection.select_epochs(warm_up, histories)
    assert selected["cross_entropy"] == {
        "test_accuracy_best_on_validation": 0.6, "validation_accuracy": 0.9, "best_epoch": 5,
        "test_accuracy_final": 0.6, "final_epoch": 5, "seconds_per_epoch": 2.0,
    }  # fmt: skip
    # Up to epoch 4: the warm-up's last epoch ties with epoch 4 and, earlier, wins.
    early = mln_tf.selection.select_epochs(warm_up, histories, last_epoch=4)["cross_entropy"]
    assert (early["best_epoch"], early["test_accuracy_best_on_validation"]) == (2, 0.7)
    assert (early["final_epoch"], early["test_accuracy_final"]) == (4, 0.75)
    assert early["seconds_per_epoch"] == 1.5
    # The reference starts from scratch: the warm-up is no candidate of it.
    assert selected["clean_reference"]["best_epoch"] == 2
    # Without warm-up epochs, only the method's own.
    assert mln_tf.selection.select_epochs({}, histories, last_epoch=4)["cross_entropy"][
        "best_epoch"] == 4  # fmt: skip
    with pytest.raises(ValueError, match="has no `validation_accuracy`"):
        mln_tf.selection.select_epochs({}, {"cross_entropy": {"epoch": [1], "meta_accuracy": [1]}})


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
    # --no-warm-up-cache trains the warm-up again, to the same (deterministic) result.
    fresh = tmp_path / "fresh"
    main(["train", *DIGITS, "--warmup-epochs", "1", "--meta-epochs", "1", "--learning-rate", "0.05",
          "0.02", "--lr-boundaries", "2", "--no-warm-up-cache", "--out", str(fresh)])  # fmt: skip
    assert _results(fresh)["warm_up"]["cached"] is False
    assert _results(fresh)["warm_up"]["test_accuracy"] == results["warm_up"]["test_accuracy"]


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
        for key in ("test_accuracy_best_on_validation", "validation_accuracy", "best_epoch",
                    "test_accuracy_final"):
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


def test_a_run_of_an_earlier_release_resumes_after_an_upgrade(finished_run, tmp_path):
    # The config.json of a release without the newest field and options: the run resumes
    # (every stage is complete, so nothing trains) to the same results.
    out = tmp_path / "earlier"
    shutil.copytree(finished_run, out)
    settings = json.loads((out / "config.json").read_text())
    del settings["meta_batch_size"]
    del settings["options"]["meta_batch_pass"], settings["options"]["readout_regularization"]
    (out / "config.json").write_text(json.dumps(settings))
    main(["train", *FULL, "--out", str(out)])
    assert _results(out)["methods"] == _results(finished_run)["methods"]
    # An option of that release at another value is still a change of settings.
    settings["options"]["label_trust"] = 9.0
    (out / "config.json").write_text(json.dumps(settings))
    with pytest.raises(SystemExit):
        main(["train", *FULL, "--out", str(out)])


def test_every_method_with_a_meta_batch_takes_the_configured_one():
    data = mln_tf.data.load_noisy("digits", noise="pair", rate=0.45, meta_size=100,
                                  validation_size=100)  # fmt: skip
    for meta_batch_size, expected in ((None, 32), (8, 8)):
        config = TrainConfig(dataset="digits", noise="pair", rate=0.45, meta_size=100,
                             validation_size=100, batch_size=32,
                             meta_batch_size=meta_batch_size)  # fmt: skip
        session = types.SimpleNamespace(config=config, data=data)
        (x, _), (x_meta, y_meta) = next(iter(
            mln_tf.train.noisy_and_meta_batches(session, data.train)
        ))  # fmt: skip
        assert (x.shape[0], x_meta.shape[0], y_meta.shape[0]) == (32, expected, expected)


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
    assert set(PRESETS) == {"paper", "cifar10", "clothing1m"}
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


def test_baselines_are_all_or_the_named_ones(capsys):
    def baselines(*flags):
        config = config_from_args(build_parser().parse_args(["train", *flags]))
        return config.baselines, config.baseline_methods()

    assert baselines() == (False, ())
    assert baselines("--baselines") == (True, mln_tf.train.BASELINES)
    # In BASELINES' order, whatever the order on the command line.
    assert baselines("--baselines", "fine_tune", "gold_loss_correction")[1] == (
        "gold_loss_correction", "fine_tune")  # fmt: skip
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--baselines", "glc"])
    assert "invalid choice: 'glc'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Received: 'glc'. Expected True, False or names from"):
        TrainConfig(baselines=["glc"])


@pytest.mark.parametrize(
    "options, message",
    [
        (["--dataset", "digits", "--label-set", "aggre"], "'digits' has synthetic noise"),
        (["--dataset", "cifar10_n", "--label-set", "best"],
         "Received: label_set='best'. Expected one of cifar10_n's"),
        (["--dataset", "digits", "--noise", "none", "--rate", "0.2"], "Received: rate=0.2"),
        (["--dataset", "digits", "--rate", "1.0"], "Received: rate=1.0"),
        (["--dataset", "digits", "--rate", "-0.1"], "Received: rate=-0.1"),
        (["--dataset", "digits", "--meta-size", "5"], "at least the number of classes, 10"),
        (["--dataset", "digits", "--meta-size", "5000"], "Expected at most the size of the clean"),
        (["--dataset", "digits", "--validation-size", "0"],
         "Received: validation_size=0. Expected a positive integer"),
        (["--dataset", "digits", "--meta-size", "1000", "--validation-size", "500"],
         "Received: meta_size=1000, validation_size=500. Expected meta_size + validation_size "
         "<= 1437"),
        (["--warmup-epochs", "-1"], "Received: warmup_epochs=-1. Expected an integer of at"),
        (["--meta-epochs", "0"], "Received: meta_epochs=0. Expected an integer of at least 1"),
        (["--stage1", "3", "--stage2", "3"], "Received: 3, with 3 warm-up epochs"),
        (["--epochs", "5", "--stage2", "6"], "epochs=5 and stage2=6 disagree"),
        (["--label-trust", "-1"], "Received: label_trust=-1.0. Expected a non-negative float"),
        (["--learning-rate", "0.1", "0.01"], "Expected increasing boundaries and one more rate"),
        (["--dataset", "digits", "--meta-batch-size", "0"],
         "Received: meta_batch_size=0. Expected a positive integer no larger than the 100"),
        (["--dataset", "digits", "--meta-batch-size", "101"], "Received: meta_batch_size=101"),
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
    data = mln_tf.data.load_noisy("digits", noise="pair", rate=0.45, meta_size=100,
                                  validation_size=100, seed=0)
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


def test_the_validation_size_shapes_the_warm_up_and_has_a_dataset_default():
    assert TrainConfig(dataset="digits").validation_size == 100
    assert TrainConfig(dataset="fashion_mnist").validation_size == 500
    args = build_parser().parse_args(["train", "--dataset", "digits", "--validation-size", "50"])
    config = config_from_args(args)
    assert config.validation_size == 50 and "validation_size" in mln_tf.train.WARM_UP_FIELDS
    assert config.warm_up_key() != dataclasses.replace(config, validation_size=60).warm_up_key()


def test_the_warm_up_cache_key_follows_the_classifier_and_the_library_versions(monkeypatch):
    config = TrainConfig(dataset="digits")
    small = json.loads(mln_tf.classifiers.fashion_cnn(10, (8, 8, 1)).to_json())
    other = json.loads(mln_tf.classifiers.cifar10_cnn(10, (8, 8, 1)).to_json())
    key = config.warm_up_key(small)
    assert key == TrainConfig(dataset="digits").warm_up_key(small)
    assert key != config.warm_up_key(other)
    assert key != dataclasses.replace(config, architecture="cifar10_cnn").warm_up_key(small)
    assert key != dataclasses.replace(config, noise="pair", rate=0.45).warm_up_key(small)
    for module in (keras, mln_tf):
        with monkeypatch.context() as patch:
            patch.setattr(module, "__version__", module.__version__ + ".other")
            assert config.warm_up_key(small) != key, module.__name__
    # The bypass: --no-warm-up-cache, `warm_up_cache=False`.
    assert config.warm_up_cache is True
    args = build_parser().parse_args(["train", "--dataset", "digits", "--no-warm-up-cache"])
    assert config_from_args(args).warm_up_cache is False


def test_noise_none_needs_no_rate_and_a_transition_matrix_is_not_a_choice(capsys):
    config = config_from_args(build_parser().parse_args(["train", "--noise", "none"]))
    assert (config.noise, config.rate) == ("none", 0.0)
    assert TrainConfig().rate == 0.4
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--noise", "transition_matrix"])
    assert "invalid choice: 'transition_matrix'" in capsys.readouterr().err


def test_verbosity_follows_the_terminal_and_the_flags(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr("mln_tf.__main__.run",
                        lambda config, out, verbose, command: calls.append(verbose))  # fmt: skip
    for flags in ([], ["--quiet"], ["--verbose"]):
        main(["train", *DIGITS, *flags, "--out", str(tmp_path / "out")])
    assert calls == [2, 0, 1]  # pytest's captured stdout is not a terminal: a line per epoch


def test_a_bug_keeps_its_traceback_and_a_bad_setting_gets_one_line(monkeypatch, tmp_path):
    def buggy_run(config, out, verbose, command):
        raise ValueError("a bug inside training")

    monkeypatch.setattr("mln_tf.__main__.run", buggy_run)
    with pytest.raises(ValueError, match="a bug inside training"):
        main(["train", *DIGITS, "--out", str(tmp_path / "out")])


def test_fresh_never_resumes(tmp_path, capsys):
    config = TrainConfig(dataset="digits", noise="symmetric", rate=0.2)
    unfinished = tmp_path / "20260101-000000"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps(config.to_dict()))
    assert default_out_dir(config, tmp_path) == str(unfinished)
    assert default_out_dir(config, tmp_path, fresh=True) != str(unfinished)
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "digits", "--noise", "symmetric", "--rate", "0.2",
              "--fresh", "--out", str(unfinished)])  # fmt: skip
    assert "--fresh: the output directory" in capsys.readouterr().err


def test_tensorboard_gets_each_methods_epoch_scalars(finished_run):
    import tensorflow as tf

    for method in ("cross_entropy", "meta_label_net", "meta_weight_net"):
        files = list((finished_run / "tensorboard" / method).rglob("events.out.tfevents.*"))
        tags = {value.tag for path in files
                for event in tf.compat.v1.train.summary_iterator(str(path))
                for value in event.summary.value}  # fmt: skip
        assert {"epoch_loss", "epoch_validation_accuracy", "epoch_test_accuracy"} <= tags, method


def test_tensorboard_gets_histograms_of_the_soft_labels(finished_run):
    import tensorflow as tf

    files = list((finished_run / "tensorboard" / "meta_label_net").glob("events.out.tfevents.*"))
    histograms = {}
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag.startswith("soft_labels/"):
                    histograms.setdefault(value.tag, []).append(event.step)
    wrong = int((~mln_tf.data.load_noisy(
        "digits", noise="pair", rate=0.45, meta_size=100, validation_size=100, seed=0
    ).train_label_is_correct).sum())  # fmt: skip
    assert wrong > 0
    for rows in ("wrong_labels", "right_labels"):
        for quantity in ("top_class_probability", "given_label_probability"):
            # Before the meta stage (after the 1 warm-up epoch), then after each of its 3
            assert sorted(histograms[f"soft_labels/{rows}/{quantity}"]) == [1, 2, 3, 4]


def test_augment_normalises_every_split_by_the_meta_set_and_augments_training(tmp_path):
    assert TrainConfig.from_preset("cifar10").augment and not TrainConfig().augment
    config = TrainConfig(dataset="digits", noise="symmetric", rate=0.2, augment=True, seed=0)
    data = mln_tf.train.load_data(config)
    preprocessed, train, (mean, std) = mln_tf.data.normalize_and_augment(data, data.train, 0)
    meta = np.concatenate([x for x, _ in data.meta.batch(512).as_numpy_iterator()])
    np.testing.assert_allclose(mean, meta.mean(axis=(0, 1, 2)), rtol=1e-5)
    for split in ("meta", "validation", "test"):
        raw = np.concatenate([x for x, _ in getattr(data, split).batch(512).as_numpy_iterator()])
        got = np.concatenate(
            [x for x, _ in getattr(preprocessed, split).batch(512).as_numpy_iterator()]
        )
        np.testing.assert_allclose(got, (raw - mean) / std, rtol=1e-5, atol=1e-5)
    normalized_meta = (meta - mean) / std
    assert abs(normalized_meta.mean()) < 1e-4 and abs(normalized_meta.std() - 1) < 1e-3
    first, again = (next(train.as_numpy_iterator())[0] for _ in range(2))
    raw_first = next(data.train.as_numpy_iterator())[0]
    assert first.shape == raw_first.shape  # cropped back to the same size
    assert not np.allclose(first, (raw_first - mean) / std) or not np.allclose(first, again)
