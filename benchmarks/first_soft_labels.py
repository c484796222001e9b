"""How right the generator's first soft labels are, before any meta step.

For each noise setting, loads the main job's cached warm-up (run the main job, or
`benchmarks/accuracy.py`, with the same settings first), fits the clean read-out of
`generator_init="clean_posterior"` on the meta set's frozen features with each inverse L2
strength C, and scores the first soft labels ŷ ∝ p(y | x)·T[y, ỹ] of the noisy training set
against its true labels: the share whose argmax is the true class, the share of correctly
labelled images moved off their label (broken), and the share of wrongly labelled ones given
their true class (fixed). It also prints each C's 5-fold cross-validated log-loss on the meta
set and the C that `readout_regularization="cross_validated"` chooses.

With `--experts`, a second table puts other estimates of p(y | x) into the same posterior
(C = 1): the warmed-up classifier's own softmax, which is the target that Gold Loss
Correction's forward-corrected loss trains towards at its first step (its gradient in the
logits is p − q, q ∝ p·T[·, ỹ]), and the normalised geometric mean of the two.

Usage:

    python benchmarks/first_soft_labels.py --settings symmetric:0.4 feature_dependent:0.4
    python benchmarks/first_soft_labels.py --settings pair:0.45 --experts
    python benchmarks/first_soft_labels.py --settings pair:0.45 --experts \\
        --after benchmarks/results/contest
"""

import argparse
import json
import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_predict  # noqa: E402

from mln_tf import classifiers, clean_baselines, noise, train  # noqa: E402
from mln_tf import label_generator as generator_lib  # noqa: E402
from mln_tf.callbacks import EpochCheckpoint  # noqa: E402
from mln_tf.report import METHOD_NAMES  # noqa: E402

# The meta stages whose final classifiers `--after` scores, when the cell has them.
TRAINED_STAGES = ("meta_label_net", "gold_loss_correction", "cross_entropy_clean",
                  "cross_entropy")  # fmt: skip


class _StageWeights(keras.Model):
    """Holds a classifier where a stage's model holds it, to read its weights from the
    stage's checkpoint (the stage's other weights stay in the file)."""

    def __init__(self, classifier, **parts):
        super().__init__()
        self.classifier = classifier
        for name, part in parts.items():  # MetaLabelNet's extractor and generator
            setattr(self, name, part)
        self.built = True


def warmed_up(config):
    """The data and the cached warm-up classifier of `config`."""
    keras.utils.clear_session()  # the classifier's layer names enter the cache key
    data = train.load_data(config)
    classifier = train.build_classifier(config, data, None)
    cache = noise.default_cache_dir() / "warm_up" / config.warm_up_key(
        json.loads(classifier.to_json())
    )
    if not (cache / "state.json").exists():
        raise SystemExit(
            f"No cached warm-up for {config.noise}:{config.rate} seed {config.seed} in "
            f"{cache}: run the main job with these settings first."
        )
    EpochCheckpoint(str(cache)).restore(classifier)
    return data, classifier


def log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def print_scores(name, log_prior, label_weights, true, given):
    """One row: p(y | x)'s accuracy, and its posterior with the given label's."""
    right = true == given
    predicted = (log_prior + label_weights[given]).argmax(axis=1)
    print(f"| {name} | {100 * np.mean(log_prior.argmax(axis=1) == true):.1f} % | "
          f"{100 * np.mean(predicted == true):.1f} % | "
          f"{100 * np.mean(predicted[right] != true[right]):.1f} % | "
          f"{100 * np.mean(predicted[~right] == true[~right]):.1f} % |")  # fmt: skip


def score_experts(classifier, features, meta_features, meta_labels, matrix, data,
                  after=None, config=None):  # fmt: skip
    """The posterior with p(y | x) from the read-out, the classifier, and both; with
    `after`, a grid folder, also from the classifiers its cell's meta stages ended with."""
    (kernel, bias), label_weights = generator_lib.clean_posterior_weights(
        meta_features, meta_labels, data.num_classes, matrix
    )
    readout = log_softmax(features @ kernel + bias)
    logits = classifier.predict(data.train_images, batch_size=512, verbose=0)
    own = log_softmax(logits.astype("float64"))
    true, given = data.train_clean_labels, data.train_noisy_labels
    print("\n| p(y \\| x) from | its accuracy | soft labels right | right labels broken | "
          "wrong labels fixed |\n|---|---|---|---|---|")  # fmt: skip
    print_scores("the clean read-out (C = 1)", readout, label_weights, true, given)
    print_scores("the warmed-up classifier", own, label_weights, true, given)
    print_scores("their geometric mean", log_softmax((readout + own) / 2), label_weights,
                 true, given)  # fmt: skip
    if after is None:
        return
    cell = os.path.join(after, f"{config.noise}_{config.rate:g}_seed{config.seed}", "stages")
    last = config.warmup_epochs + config.meta_epochs
    for stage in TRAINED_STAGES:
        path = os.path.join(cell, stage, f"epoch{last}.weights.h5")
        if not os.path.exists(path):
            continue
        parts = {}
        if stage == "meta_label_net":
            parts = {"feature_extractor": generator_lib.freeze_feature_extractor(
                         classifier, classifiers.FEATURE_LAYER),
                     "label_generator": generator_lib.build_label_generator(
                         features.shape[1], data.num_classes, label_input=True)}  # fmt: skip
        if stage == "cross_entropy":  # its checkpoint is the classifier's own
            classifier.load_weights(path)
        else:  # the stage model's own variables (a seed, a step count) are not needed
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "A total of 1 objects could not be loaded")
                _StageWeights(classifier, **parts).load_weights(path, skip_mismatch=True)
        name = f"{METHOD_NAMES.get(stage, stage)}, after epoch {last}"
        if parts:
            stage_features = parts["feature_extractor"].predict(data.train_images,
                                                                batch_size=512, verbose=0)
            inputs = generator_lib.generator_inputs(stage_features, given, data.num_classes,
                                                    label_input=True)  # fmt: skip
            soft_labels = parts["label_generator"].predict(inputs, batch_size=512, verbose=0)
            # Its soft labels already read the given label: no V to add.
            print_scores(f"{name}: its generator's soft labels", np.log(soft_labels + 1e-12),
                         np.zeros_like(label_weights), true, given)  # fmt: skip
        logits = classifier.predict(data.train_images, batch_size=512, verbose=0)
        print_scores(name, log_softmax(logits.astype("float64")), label_weights, true,
                     given)  # fmt: skip


def score(setting, seed, experts=False, after=None):
    noise_name, rate = setting.split(":")
    config = train.TrainConfig.from_settings(noise=noise_name, rate=float(rate), seed=seed)
    data, classifier = warmed_up(config)
    extractor = generator_lib.freeze_feature_extractor(classifier, classifiers.FEATURE_LAYER)
    meta = list(data.meta.as_numpy_iterator())
    meta_images = np.stack([image for image, _ in meta])
    meta_labels = np.array([label for _, label in meta])
    meta_features = extractor.predict(meta_images, batch_size=512, verbose=0)
    matrix = clean_baselines.gold_transition_matrix(classifier, meta_images, meta_labels,
                                                    data.num_classes)  # fmt: skip
    features = extractor.predict(data.train_images, batch_size=512, verbose=0)
    true, given = data.train_clean_labels, data.train_noisy_labels
    right = true == given
    standardized, _, _ = generator_lib.standardized_features(meta_features.astype("float64"))
    chosen = generator_lib.cross_validated_regularization(meta_features, meta_labels)
    print(f"\n{setting}, seed {seed}: cross-validation chooses C = {chosen:.3g}")
    print("| C | held-out log-loss | soft labels right | right labels broken | "
          "wrong labels fixed |\n|---|---|---|---|---|")  # fmt: skip
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    for c in generator_lib.READOUT_CS:
        held_out = cross_val_predict(LogisticRegression(C=c, max_iter=2000), standardized,
                                     meta_labels, cv=folds, method="predict_proba")  # fmt: skip
        log_loss = -np.log(held_out[np.arange(len(meta_labels)), meta_labels]).mean()
        (kernel, bias), label_weights = generator_lib.clean_posterior_weights(
            meta_features, meta_labels, data.num_classes, matrix, regularization=c
        )
        predicted = (features @ kernel + bias + label_weights[given]).argmax(axis=1)
        print(f"| {c:.3g} | {log_loss:.3f} | {100 * np.mean(predicted == true):.1f} % | "
              f"{100 * np.mean(predicted[right] != true[right]):.1f} % | "
              f"{100 * np.mean(predicted[~right] == true[~right]):.1f} % |")
    if experts:
        score_experts(classifier, features, meta_features, meta_labels, matrix, data, after,
                      config)  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=["feature_dependent:0.4"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--experts", action="store_true",
                        help="also score the posterior on the classifier's softmax")  # fmt: skip
    parser.add_argument("--after", metavar="GRID",
                        help="with --experts: also the classifiers of GRID's stages")  # fmt: skip
    args = parser.parse_args()
    for setting in args.settings:
        score(setting, args.seed, args.experts, args.after)


if __name__ == "__main__":
    main()
