"""MetaLabelNet's options: one definition, read by the model, the command line and the README."""

import argparse
import dataclasses
import pathlib

import pytest

import mln_tf
from mln_tf import options

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_paper_is_the_class_defaults_and_recommended_changes_eight_options():
    assert options.PAPER == options.MetaLabelNetOptions()
    assert options.RECOMMENDED.changes_from(options.PAPER) == {
        "entropy_weight": 0.0,
        "virtual_scope": "head",
        "label_input": True,
        "label_trust": 5.0,
        "generator_init": "clean_posterior",
        "loss_scale": "sum_over_classes",
        "label_loss": "cross_entropy",
        "clean_weight": 1.0,
    }


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"virtual_lr": 0.0}, "Received: virtual_lr=0.0. Expected a positive float"),
        ({"entropy_weight": float("inf")}, "Received: entropy_weight=inf. Expected a non-negative"),
        ({"head_layers": True}, "Received: head_layers=True. Expected a positive integer"),
        ({"label_input": 1}, "Received: label_input=1. Expected True or False"),
        ({"label_loss": "kl"}, "Received: label_loss='kl'. Expected one of 'reverse_kl', "),
    ],
)
def test_each_option_is_checked_where_it_is_defined(changes, message):
    with pytest.raises(ValueError, match=message):
        options.PAPER.replace(**changes)


def test_options_are_frozen_and_unknown_names_are_refused():
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.PAPER.virtual_lr = 2.0
    with pytest.raises(TypeError, match="Unknown MetaLabelNet option\\(s\\): alpha"):
        options.PAPER.replace(alpha=2.0)


def test_the_old_virtual_step_values_are_translated():
    with pytest.warns(DeprecationWarning, match="`virtual_step='local'` is deprecated"):
        assert options.PAPER.replace(virtual_step="local").virtual_batch == "replica"


def test_split_separates_options_from_other_settings():
    found, rest = options.split({"label_trust": 3.0, "seed": 1, "virtual_lr": 0.5})
    assert found == {"label_trust": 3.0, "virtual_lr": 0.5} and rest == {"seed": 1}


def test_every_option_gets_a_command_line_flag_with_its_default_in_the_help():
    parser = argparse.ArgumentParser()
    options.add_arguments(parser)
    assert {action.dest for action in parser._actions} >= set(options.NAMES)
    args = parser.parse_args(["--generator-lr", "0.02", "--no-label-input", "--loss-scale",
                              "mean"])  # fmt: skip
    assert (args.generator_learning_rate, args.label_input, args.loss_scale) == (
        0.02, False, "mean")  # fmt: skip
    assert args.virtual_lr is None  # unset flags stay None: the defaults come from elsewhere
    help_text = " ".join(parser.format_help().split())  # argparse wraps the lines
    assert "with label_input, not with clean_posterior) (default: 5.0; the paper: 0.0)" in (
        help_text)  # label_trust  # fmt: skip
    with pytest.raises(SystemExit):
        parser.parse_args(["--virtual-scope", "body"])


def test_the_model_reads_its_options_and_the_compile_rule_holds():
    classifier = mln_tf.classifiers.fashion_cnn(num_classes=10)
    model = mln_tf.MetaLabelNet(classifier, feature_layer="features",
                                options=options.RECOMMENDED, label_trust=7.0)  # fmt: skip
    assert model.options == options.RECOMMENDED.replace(label_trust=7.0)
    for name in options.NAMES:
        assert getattr(model, name) == getattr(model.options, name)
    assert set(options.COMPILE_NAMES) == {
        "virtual_lr", "entropy_weight", "virtual_scope", "head_layers", "meta_gradient",
        "virtual_batch", "loss_scale", "label_loss", "clean_weight", "meta_batch_pass",
    }  # fmt: skip
    restored = mln_tf.MetaLabelNet.from_config(model.get_config())
    assert restored.options == model.options


def test_the_readme_table_is_the_one_the_options_generate():
    assert options.markdown_table() in README.read_text()
