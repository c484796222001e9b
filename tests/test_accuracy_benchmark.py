"""benchmarks/accuracy.py: the grid, its resumption and its table."""

import importlib.util
import json
import pathlib
import statistics

import pytest

PATH = pathlib.Path(__file__).parents[1] / "benchmarks" / "accuracy.py"
spec = importlib.util.spec_from_file_location("accuracy_benchmark", PATH)
accuracy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(accuracy)

TINY = ["dataset=digits", "meta_size=100", "validation_size=100", "warmup_epochs=1",
        "meta_epochs=1", "batch_size=32"]
KEYS = ("test_accuracy_best_on_validation", "test_accuracy_final")


def test_grid_tabulates_the_runs_it_made(tmp_path, monkeypatch):
    monkeypatch.setenv("MLN_TF_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "grid"
    argv = ["--settings", "symmetric:0.4", "--seeds", "0", "1", "--set", *TINY, "--out", str(out)]
    accuracy.main(argv)

    result = json.loads((out / "accuracy.json").read_text())
    runs = result["runs"]["symmetric:0.4"]
    cells = [json.loads((out / f"symmetric_0.4_seed{seed}" / "results.json").read_text())
             for seed in (0, 1)]  # fmt: skip
    for method, values in runs.items():
        assert values["seeds"] == [0, 1]
        for key in KEYS:
            assert values[key] == [cell["methods"][method][key] for cell in cells]
    table = (out / "accuracy.md").read_text()
    summary = result["summary"]["symmetric:0.4"]["meta_label_net"]
    for key in KEYS:
        percent = [100 * v for v in runs["meta_label_net"][key]]
        assert summary[key]["mean"] == pytest.approx(statistics.fmean(percent))
        assert summary[key]["std"] == pytest.approx(statistics.stdev(percent))
        # The paired difference: the spread of the per-seed differences, not of the means.
        differences = [100 * (cell["methods"]["meta_label_net"][key]
                              - cell["methods"]["cross_entropy"][key]) for cell in cells]
        paired = summary["difference_to_cross_entropy"][key]
        assert paired["mean"] == pytest.approx(statistics.fmean(differences))
        assert paired["std"] == pytest.approx(statistics.stdev(differences))
    assert "difference_to_cross_entropy" not in result["summary"]["symmetric:0.4"]["cross_entropy"]
    best, final = summary[KEYS[0]], summary[KEYS[1]]
    best_difference, final_difference = (summary["difference_to_cross_entropy"][key]
                                         for key in KEYS)  # fmt: skip
    assert (
        f"| symmetric:0.4 | MetaLabelNet | {best['mean']:.2f} ± {best['std']:.2f} | "
        f"{best_difference['mean']:+.2f} ± {best_difference['std']:.2f} | "
        f"{final['mean']:.2f} ± {final['std']:.2f} | "
        f"{final_difference['mean']:+.2f} ± {final_difference['std']:.2f} | 2 |"
    ) in table
    assert "python benchmarks/accuracy.py --settings symmetric:0.4" in table
    assert "best accuracy on the clean validation split" in table

    # A second call reads the finished cells back instead of training again.
    cell_path = out / "symmetric_0.4_seed0" / "results.json"
    cell = json.loads(cell_path.read_text())
    cell["methods"]["meta_label_net"]["test_accuracy_best_on_validation"] = 0.125
    cell_path.write_text(json.dumps(cell))
    accuracy.main(argv)
    again = json.loads((out / "accuracy.json").read_text())["runs"]["symmetric:0.4"]
    assert again["meta_label_net"][KEYS[0]] == [0.125, runs["meta_label_net"][KEYS[0]][1]]

    # A cell from before the validation split is refused with a message, not a KeyError.
    old = {key: value for key, value in cell["methods"]["meta_label_net"].items()
           if key != "test_accuracy_best_on_validation"}  # fmt: skip
    cell["methods"]["meta_label_net"] = {**old, "test_accuracy_best_on_meta": 0.5}
    cell_path.write_text(json.dumps(cell))
    with pytest.raises(ValueError, match="run before model selection moved to the clean "
                       "validation split: its results.json has no "
                       "test_accuracy_best_on_validation for 'meta_label_net'"):
        accuracy.main(argv)


def test_one_seed_has_no_spread():
    stats = accuracy.describe([0.8123])
    assert stats["std"] is None and stats["mean"] == pytest.approx(81.23)
    table = accuracy.format_markdown(
        {"symmetric:0.8": {"cross_entropy": {key: stats for key in KEYS}}}, "python ..."
    )
    assert "| symmetric:0.8 | cross-entropy | 81.23 |  | 81.23 |  | 1 |" in table
    assert "±" not in table.split("\n", 4)[-1]


def test_the_table_by_method_puts_each_setting_in_a_column_and_bolds_its_best():
    def cell(mean, difference=None, std=None):
        stats = {key: {"mean": mean, "std": std} for key in KEYS}
        if difference is not None:
            stats["difference_to_cross_entropy"] = {key: {"mean": difference, "std": std}
                                                    for key in KEYS}  # fmt: skip
        return stats

    summary = {
        "symmetric:0.4": {"cross_entropy": cell(86.37), "meta_label_net": cell(86.30, -0.07)},
        "pair:0.45": {"cross_entropy": cell(80.32), "meta_label_net": cell(88.77, 8.45),
                      "gold_loss_correction": cell(89.33, 9.01)},
    }  # fmt: skip
    lines = accuracy.format_by_method(summary).splitlines()
    assert lines[2] == "| method | symmetric:0.4 | pair:0.45 |"
    assert lines[4:] == [
        "| cross-entropy | **86.37** | 80.32 |",
        "| MetaLabelNet | 86.30 (-0.07) | 88.77 (+8.45) |",
        "| gold loss correction (GLC) |  | **89.33 (+9.01)** |",
    ]
    assert lines[0].startswith("Best on validation, a row per method")

    # With seeds: the spread of each mean and of each paired difference.
    summary["pair:0.45"]["meta_label_net"] = cell(88.77, 8.45, std=0.5)
    final = accuracy.format_by_method(summary, KEYS[1]).splitlines()
    assert final[0].startswith("Final epoch, a row per method")
    assert final[5] == "| MetaLabelNet | 86.30 (-0.07) | 88.77 ± 0.50 (+8.45 ± 0.50) |"


def test_leaders_pair_the_winner_with_the_runner_up_seed_by_seed():
    def runs(seeds, values):
        return {"seeds": seeds, KEYS[0]: values, KEYS[1]: values}

    table = {
        "pair:0.45": {
            "cross_entropy": runs([0, 1, 2], [0.80, 0.59, 0.70]),
            "meta_label_net": runs([0, 1, 2], [0.8877, 0.8801, 0.8850]),
            "gold_loss_correction": runs([0, 1, 2], [0.8933, 0.8853, 0.8840]),
            "fine_tune": runs([0, 2], [0.8833, 0.8922]),
        },
        "feature_dependent:0.4": {
            "cross_entropy": runs([0, 1], [0.767, 0.7736]),
            "meta_label_net": runs([0, 1], [0.8241, 0.8243]),
            "fine_tune": runs([0, 1], [0.8175, 0.8181]),
        },
    }
    found = accuracy.leaders(table)
    # Means: GLC 88.753, fine-tuning 88.775 (two seeds), MetaLabelNet 88.427.
    pair = found["pair:0.45"]
    assert (pair["first"], pair["second"], pair["best_other"]) == (
        "fine_tune", "gold_loss_correction", "fine_tune")
    # Paired over the seeds both ran (0 and 2): 88.33 − 89.33 and 89.22 − 88.40.
    assert pair["margin"]["mean"] == pytest.approx(statistics.fmean([-1.00, 0.82]))
    assert pair["margin"]["std"] == pytest.approx(statistics.stdev([-1.00, 0.82]))
    assert pair["margin"]["runs"] == 2
    ours = [88.77 - 88.33, 88.50 - 89.22]
    assert pair["method_to_best_other"]["mean"] == pytest.approx(statistics.fmean(ours))
    fd = found["feature_dependent:0.4"]
    assert (fd["first"], fd["second"], fd["best_other"]) == (
        "meta_label_net", "fine_tune", "fine_tune")
    assert fd["margin"]["mean"] == pytest.approx(statistics.fmean([0.66, 0.62]))
    assert fd["method_to_best_other"] == fd["margin"]

    lines = accuracy.format_leaders(table).splitlines()
    assert lines[0].startswith("Best on validation: the first and second method")
    assert lines[4] == (
        "| pair:0.45 | cross-entropy, then fine-tuned on the meta set | gold loss correction "
        "(GLC) | -0.09 ± 1.29 | -0.14 ± 0.82 (against cross-entropy, then fine-tuned on the "
        "meta set) | 2 |"
    )
    assert lines[5] == (
        "| feature_dependent:0.4 | MetaLabelNet | cross-entropy, then fine-tuned on the meta "
        "set | +0.64 ± 0.03 | +0.64 ± 0.03 (against cross-entropy, then fine-tuned on the "
        "meta set) | 2 |"
    )


def test_grid_arguments_are_checked():
    assert accuracy.parse_setting("pair:0.45") == ("pair", 0.45)
    assert accuracy.parse_override("virtual_lr=0.5") == ("virtual_lr", 0.5)
    assert accuracy.parse_override("meta_epochs=8") == ("meta_epochs", 8)
    assert accuracy.parse_override("label_trust=10") == ("label_trust", 10.0)
    assert accuracy.parse_override("validation_size=50") == ("validation_size", 50)
    assert accuracy.parse_override("meta_size=250") == ("meta_size", 250)
    assert accuracy.parse_override("max_train_examples=15000") == ("max_train_examples", 15000)
    assert accuracy.parse_override("architecture=cifar10_cnn") == ("architecture", "cifar10_cnn")
    assert accuracy.parse_override("baselines=true") == ("baselines", True)
    assert accuracy.parse_override("baselines=gold_loss_correction,fine_tune") == (
        "baselines", ("gold_loss_correction", "fine_tune"))  # fmt: skip
    assert accuracy.build_parser().get_default("seeds") == [0, 1, 2]
    with pytest.raises(accuracy.argparse.ArgumentTypeError, match="Expected NOISE:RATE"):
        accuracy.parse_setting("symmetric")
    with pytest.raises(accuracy.argparse.ArgumentTypeError, match="with a field of TrainConfig"):
        accuracy.parse_override("alpha=1")


def test_grid_with_a_preset_and_one_clean_reference_per_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("MLN_TF_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "grid"
    accuracy.main(["--preset", "paper", "--settings", "symmetric:0.4", "pair:0.45", "--seeds",
                   "0", "--with-clean-reference", "--set", *TINY, "--out", str(out)])  # fmt: skip

    first, second = (
        json.loads((out / f"{cell}_seed0" / "config.json").read_text())
        for cell in ("symmetric_0.4", "pair_0.45")
    )
    assert (first["preset"], first["options"]["label_input"], first["options"]["loss_scale"]) == (
        "paper", False, "mean")  # fmt: skip
    assert (first["clean_reference"], second["clean_reference"]) == (True, False)
    runs = json.loads((out / "accuracy.json").read_text())["runs"]
    cell = json.loads((out / "symmetric_0.4_seed0" / "results.json").read_text())
    clean = cell["methods"]["clean_reference"]["test_accuracy_best_on_validation"]
    assert runs["symmetric:0.4"]["clean_reference"] == runs["pair:0.45"]["clean_reference"]
    assert runs["pair:0.45"]["clean_reference"][KEYS[0]] == [clean]


def test_an_ablation_takes_the_baseline_from_an_earlier_grid(tmp_path, monkeypatch):
    monkeypatch.setenv("MLN_TF_CACHE_DIR", str(tmp_path / "cache"))
    base, ablation = tmp_path / "base", tmp_path / "ablation"
    common = ["--settings", "symmetric:0.4", "--seeds", "0"]
    accuracy.main([*common, "--set", *TINY, "--out", str(base)])
    # Mark the earlier baseline, so that the ablation can only report it by copying it.
    state_path = base / "symmetric_0.4_seed0" / "stages" / "cross_entropy" / "state.json"
    state = json.loads(state_path.read_text())
    state["history"]["validation_accuracy"][-1] = 1.0
    state["history"]["test_accuracy"][-1] = 0.125
    state_path.write_text(json.dumps(state))

    accuracy.main([*common, "--set", *TINY, "entropy_weight=0.5", "--baselines-from", str(base),
                   "--out", str(ablation)])  # fmt: skip

    cell = ablation / "symmetric_0.4_seed0"
    assert json.loads((cell / "config.json").read_text())["options"]["entropy_weight"] == 0.5
    assert json.loads((cell / "stages" / "cross_entropy" / "state.json").read_text()) == state
    runs = json.loads((ablation / "accuracy.json").read_text())["runs"]["symmetric:0.4"]
    assert runs["cross_entropy"][KEYS[0]] == [0.125]
    assert (cell / "stages" / "meta_label_net" / "state.json").exists()


def test_an_ablation_refuses_a_baseline_trained_otherwise(tmp_path, monkeypatch):
    monkeypatch.setenv("MLN_TF_CACHE_DIR", str(tmp_path / "cache"))
    base = tmp_path / "base"
    common = ["--settings", "symmetric:0.4", "--seeds", "0"]
    with pytest.raises(ValueError, match="holds no finished run"):
        accuracy.main([*common, "--set", *TINY, "--baselines-from", str(base),
                       "--out", str(tmp_path / "a")])  # fmt: skip
    accuracy.main([*common, "--set", *TINY, "--out", str(base)])
    with pytest.raises(ValueError, match=r"differ in: meta_epochs\)\. Leave out --baselines-from"):
        accuracy.main([*common, "--set", *TINY[:-2], "meta_epochs=2", "batch_size=32",
                       "--baselines-from", str(base), "--out", str(tmp_path / "b")])  # fmt: skip
    assert not (tmp_path / "b" / "symmetric_0.4_seed0" / "stages").exists()


def test_last_epoch_tabulates_exactly_what_a_shorter_run_gives(tmp_path, monkeypatch):
    monkeypatch.setenv("MLN_TF_CACHE_DIR", str(tmp_path / "cache"))
    common = ["--settings", "symmetric:0.4", "--seeds", "0", "--set", *TINY[:-2]]
    longer, shorter = tmp_path / "longer", tmp_path / "shorter"
    accuracy.main([*common, "meta_epochs=2", "batch_size=32", "--out", str(longer)])
    accuracy.main([*common, "meta_epochs=1", "batch_size=32", "--out", str(shorter)])
    accuracy.main([*common, "meta_epochs=2", "batch_size=32", "--last-epoch", "2",
                   "--out", str(longer)])  # fmt: skip

    truncated = json.loads((longer / "accuracy_up_to_epoch2.json").read_text())["runs"]
    short = json.loads((shorter / "accuracy.json").read_text())["runs"]
    assert truncated == short
    assert set(truncated["symmetric:0.4"]) == {"cross_entropy", "meta_label_net"}
    assert truncated["symmetric:0.4"]["cross_entropy"]["seeds"] == [0]
    # The grid's own table is left as it was.
    full = json.loads((longer / "accuracy.json").read_text())
    assert "--last-epoch" not in full["command"]
    with pytest.raises(ValueError, match=r"--last-epoch 1 is not an epoch of the meta stage.*2–3"):
        accuracy.main([*common, "meta_epochs=2", "batch_size=32", "--last-epoch", "1",
                       "--out", str(longer)])  # fmt: skip


def test_tabulate_only_reads_finished_cells_and_names_the_unfinished(tmp_path, monkeypatch,
                                                                    capsys):
    monkeypatch.setenv("MLN_TF_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "grid"
    common = ["--settings", "symmetric:0.4", "--set", *TINY, "--out", str(out)]
    accuracy.main(["--seeds", "0", *common])
    one_seed = json.loads((out / "accuracy.json").read_text())["runs"]

    (out / "symmetric_0.4_seed1").mkdir()  # a cell that was started, not finished
    with pytest.raises(ValueError, match=r"--tabulate-only: 1 cell\(s\) of the grid are not "
                       r"finished: .*symmetric_0\.4_seed1\. Run the grid without"):
        accuracy.main(["--seeds", "0", "1", "--tabulate-only", *common])
    assert not (out / "symmetric_0.4_seed1" / "results.json").exists()  # nothing trained

    # --finished-only leaves the unfinished cells out, and a setting with none finished.
    accuracy.main(["--seeds", "0", "1", "--tabulate-only", "--finished-only", *common[:2],
                   "pair:0.45", *common[2:]])  # fmt: skip
    partial = json.loads((out / "accuracy.json").read_text())
    assert partial["runs"] == one_seed
    left_out = ("symmetric_0.4_seed1", "pair_0.45_seed0", "pair_0.45_seed1")
    assert partial["unfinished"] == [str(out / name) for name in left_out]
    table = (out / "accuracy.md").read_text()
    assert ("Not finished, so left out of every table: symmetric_0.4_seed1, pair_0.45_seed0, "
            "pair_0.45_seed1.") in table
    assert "| method | symmetric:0.4 (1 seed) |" in table
    assert "| pair:0.45 |" not in table and "pair:0.45 (" not in table
    assert not (out / "pair_0.45_seed0").exists()  # nothing trained
    with pytest.raises(SystemExit):
        accuracy.main(["--seeds", "0", "--finished-only", *common])
    assert "--finished-only tabulates a grid without training: add --tabulate-only" in (
        capsys.readouterr().err)

    (out / "accuracy.json").unlink()
    accuracy.main(["--seeds", "0", "--tabulate-only", *common])
    again = json.loads((out / "accuracy.json").read_text())
    assert again["runs"] == one_seed
    assert "--tabulate-only" in again["command"]
