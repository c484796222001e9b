"""Keras Tuner search over MetaLabelNet's hyper-parameters.

`MetaLabelNetHyperModel` searches β (the generator's learning rate), α (the virtual step),
the warm-up length and the entropy weight. Each trial builds a fresh classifier, warms it
up with cross-entropy on the noisy labels, cuts the frozen feature extractor from it,
starts the label generator from it and runs the meta stage with `MetaLabelNet.fit`, through
the same schedule as the main job (`mln_tf.schedule`). The MetaLabelNet options default to
`mln_tf.options.RECOMMENDED`, as the main job's do.
The objective must be a metric of a clean validation split that is neither the meta set nor
the test split, for example `kt.Objective("val_accuracy", "max")` with `validation_data=`
the data's clean validation set, `NoisyData.validation` (`validation_size` of `load_noisy`).

Example:

```python
import keras_tuner as kt
import mln_tf
from mln_tf.tuner import MetaLabelNetHyperModel

data = mln_tf.data.load_noisy("digits", noise="symmetric", rate=0.4, meta_size=100,
                              validation_size=100)
tuner = kt.RandomSearch(
    MetaLabelNetHyperModel(data.num_classes, data.image_shape),
    objective=kt.Objective("val_accuracy", "max"), max_trials=4)
tuner.search(mln_tf.data.with_meta(data.train, data.meta, batch_size=32),
             validation_data=mln_tf.data.batched(data.validation, 256), epochs=3)
best_model = tuner.get_best_models()[0]
```
"""

import keras
import keras_tuner as kt
import numpy as np
import tensorflow as tf

from mln_tf import classifiers, schedule
from mln_tf import options as options_lib
from mln_tf.meta_label_net import MetaLabelNet
from mln_tf.optimizers import paper_classifier_optimizer

# Hyperband sets this value on a trial that continues the best model of an earlier round.
RESUMED_TRIAL_KEY = "tuner/trial_id"

DEFAULT_SEARCH_SPACE = {
    "generator_learning_rate": (1e-4, 1e-1),
    "virtual_lr": (0.1, 10.0),
    "warmup_epochs": (1, 5),
    "entropy_weight": (0.0, 1.0),
}


class MetaLabelNetHyperModel(kt.HyperModel):
    """A `keras_tuner.HyperModel` that runs MetaLabelNet's two-stage schedule per trial.

    `build(hp)` returns a compiled MetaLabelNet over a fresh classifier. `fit(hp, model, x,
    validation_data=..., epochs=...)` then:

    1. warms up a copy of `model.classifier` with cross-entropy on the noisy half of `x`
       for `warmup_epochs` epochs, without the tuner's callbacks (`schedule.warm_up`);
    2. continues from it (`schedule.start_meta_stage`): the warmed-up weights and SGD
       momentum, the frozen feature extractor cut again, the generator started as the
       options say;
    3. runs the meta stage (`schedule.meta_stage`) for `epochs` epochs with the tuner's
       callbacks and `validation_data`.

    `epochs` counts meta-stage epochs only, which is what Hyperband's epoch budget means. A
    Hyperband trial that continues an earlier trial's model has its warmed-up classifier,
    feature extractor and generator loaded already, so its warm-up is skipped.

    Each search dimension is either a `(min, max)` pair, searched (log scale for the two
    learning rates), a single number, fixed, or `None`, fixed to the value in `options`.

    Args:
        num_classes: int, the number of classes C.
        input_shape: tuple, the shape of one image.
        classifier_builder: callable `(num_classes, input_shape) -> keras.Model` that returns
            a built classifier outputting logits. Defaults to `mln_tf.classifiers.fashion_cnn`.
        feature_layer: str, the classifier layer the feature extractor is cut at. Defaults
            to `"features"`, the penultimate layer of every `mln_tf.classifiers` builder.
        learning_rate: float, the classifier's SGD learning rate in both stages. Defaults
            to 1e-2.
        generator_learning_rate: `(min, max)` or float, β. Defaults to `(1e-4, 1e-1)`.
        virtual_lr: `(min, max)` or float, α. Defaults to `(0.1, 10.0)`.
        warmup_epochs: `(min, max)` or int, the cross-entropy warm-up length. Defaults to
            `(1, 5)`.
        entropy_weight: `(min, max)` or float. Defaults to `(0.0, 1.0)`.
        label_trust: `(min, max)`, float or `None`, κ, the given label's initial logit
            bonus with `label_input`; a pair is searched as the hyper-parameter
            `"label_trust"` (no single κ suits every noise: `docs/accuracy.md`), only with
            options whose generator starts from κ·I (`generator_init="classifier_head"` or
            `"random"`): the default clean posterior sets V itself, and a pair then raises
            a `ValueError`. Defaults to `None`, the options' κ, not declared.
        options: `mln_tf.options.MetaLabelNetOptions`, the fixed options, and the values of
            the dimensions passed as `None`. Defaults to `mln_tf.options.RECOMMENDED`.
            `options=mln_tf.options.PAPER` with `generator_learning_rate=None,
            virtual_lr=None, entropy_weight=None` runs the authors' algorithm exactly.
            With `generator_init="classifier_head"` the classifier's last layer must be a
            linear Dense layer on the features.
        jit_compile: bool or `"auto"`, passed to `compile` in both stages. Defaults to
            `"auto"`.
        seed: optional int. When set, each trial's classifier starts from the same weights,
            so that trials differ only in their hyper-parameters. Defaults to `None`.

    Example:

    >>> hypermodel = MetaLabelNetHyperModel(10, (28, 28, 1), warmup_epochs=2, seed=0)
    >>> model = hypermodel.build(kt.HyperParameters())
    >>> model.virtual_lr
    1.0
    """

    def __init__(
        self,
        num_classes,
        input_shape,
        *,
        classifier_builder=classifiers.fashion_cnn,
        feature_layer=classifiers.FEATURE_LAYER,
        learning_rate=1e-2,
        generator_learning_rate=DEFAULT_SEARCH_SPACE["generator_learning_rate"],
        virtual_lr=DEFAULT_SEARCH_SPACE["virtual_lr"],
        warmup_epochs=DEFAULT_SEARCH_SPACE["warmup_epochs"],
        entropy_weight=DEFAULT_SEARCH_SPACE["entropy_weight"],
        label_trust=None,
        options=options_lib.RECOMMENDED,
        jit_compile="auto",
        seed=None,
        name="meta_label_net",
        tunable=True,
    ):
        super().__init__(name=name, tunable=tunable)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"Invalid value for argument `num_classes`. Received: num_classes={num_classes!r}"
                ". Expected an integer of at least 2."
            )
        if not callable(classifier_builder):
            raise TypeError(
                "Invalid type for argument `classifier_builder`. Received: "
                f"{type(classifier_builder).__name__}. Expected a callable "
                "`(num_classes, input_shape) -> keras.Model`."
            )
        if not (isinstance(learning_rate, (int, float)) and learning_rate > 0):
            raise ValueError(
                "Invalid value for argument `learning_rate`. Received: "
                f"learning_rate={learning_rate!r}. Expected a positive float."
            )
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        self.classifier_builder = classifier_builder
        self.feature_layer = feature_layer
        self.learning_rate = float(learning_rate)
        if not isinstance(options, options_lib.MetaLabelNetOptions):
            raise TypeError(
                f"Invalid type for argument `options`. Received: {type(options).__name__}. "
                "Expected a `mln_tf.options.MetaLabelNetOptions`."
            )
        self.options = options

        def dimension(name, value, **bounds):
            return _check_range(name, getattr(options, name) if value is None else value,
                                **bounds)  # fmt: skip

        self.generator_learning_rate = dimension(
            "generator_learning_rate", generator_learning_rate, minimum=0.0, exclusive=True
        )
        self.virtual_lr = dimension("virtual_lr", virtual_lr, minimum=0.0, exclusive=True)
        self.warmup_epochs = _check_range("warmup_epochs", warmup_epochs, minimum=1, integer=True)
        self.entropy_weight = dimension("entropy_weight", entropy_weight, minimum=0.0)
        self.label_trust = dimension("label_trust", label_trust, minimum=0.0)
        if isinstance(self.label_trust, tuple) and not _uses_label_trust(options):
            raise ValueError(
                f"Invalid value for argument `label_trust`. Received: label_trust="
                f"{self.label_trust!r}, but with label_input={options.label_input} and "
                f"generator_init={options.generator_init!r} the generator does not start "
                "from κ·I (the clean posterior starts V at the log of the noise matrix). "
                "Search κ with options.replace(label_input=True, "
                "generator_init='classifier_head'), or leave label_trust unset."
            )
        self.jit_compile = jit_compile
        self.seed = seed

    def declare_hyperparameters(self, hp):
        """Declares the hyper-parameters in `hp` and returns their values.

        The four training settings are always declared (fixed ones with `hp.Fixed`);
        `label_trust` only when it is searched.
        """
        options = self.options
        values = {
            name: _declare(hp, name, getattr(self, name), default=getattr(options, name))
            for name in ("generator_learning_rate", "virtual_lr", "entropy_weight")
        }
        values["warmup_epochs"] = _declare(hp, "warmup_epochs", self.warmup_epochs, default=None)
        values["label_trust"] = (
            _declare(hp, "label_trust", self.label_trust, default=options.label_trust)
            if isinstance(self.label_trust, tuple) else self.label_trust
        )  # fmt: skip
        return values

    def build(self, hp):
        """Returns a compiled MetaLabelNet over a fresh classifier, for the values in `hp`."""
        values = self.declare_hyperparameters(hp)
        if self.seed is not None:
            keras.utils.set_random_seed(self.seed)
        classifier = self.classifier_builder(self.num_classes, self.input_shape)
        if int(classifier.output_shape[-1]) != self.num_classes:
            raise kt.errors.FatalValueError(
                f"The classifier from `classifier_builder` outputs {classifier.output_shape[-1]} "
                f"logits, but the hypermodel has num_classes={self.num_classes}."
            )
        options = self.options.replace(
            **{name: value for name, value in values.items() if name != "warmup_epochs"}
        )
        try:
            model = MetaLabelNet(classifier, feature_layer=self.feature_layer, options=options)
        except ValueError as error:  # the same for every trial: stop the search
            raise kt.errors.FatalValueError(str(error)) from error
        model.compile(
            optimizer=paper_classifier_optimizer(self.learning_rate),
            jit_compile=self.jit_compile,
        )
        return model

    def fit(self, hp, model, x, *, validation_data=None, epochs=1, callbacks=None, **kwargs):
        """Warms up the classifier (unless the trial resumes one), then runs the meta stage.

        Args:
            hp: `keras_tuner.HyperParameters` of the trial.
            model: the MetaLabelNet from `build(hp)`.
            x: `tf.data.Dataset` of `((x, y), (x_meta, y_meta))` batches, from
                `mln_tf.data.with_meta`. Its noisy half `(x, y)` also feeds the warm-up;
                unlabeled examples (`y = -1`) are left out of it.
            validation_data: `tf.data.Dataset` of clean `(x, y)` batches, disjoint from the
                meta set and the test split. The objective is computed on it.
            epochs: int, the number of meta-stage epochs. Defaults to 1.
            callbacks: the tuner's callbacks, for the meta stage only.
            **kwargs: passed to `MetaLabelNet.fit` (`initial_epoch`, `verbose`, ...).

        Returns:
            The meta stage's `keras.callbacks.History`.
        """
        self._check_training_data(x)
        self._check_validation_data(validation_data)
        values = self.declare_hyperparameters(hp)
        verbose = kwargs.get("verbose", "auto")
        if RESUMED_TRIAL_KEY not in hp.values:
            self.warm_up(model, x, epochs=values["warmup_epochs"], verbose=verbose)
        first_epoch = kwargs.pop("initial_epoch", 0)
        return schedule.meta_stage(
            model, x, first_epoch, epochs, callbacks=callbacks or (),
            validation_data=validation_data, **kwargs,
        )  # fmt: skip

    def warm_up(self, model, x, *, epochs, verbose="auto"):
        """Stage 1: trains the classifier with cross-entropy, then starts the meta stage
        from it (`mln_tf.schedule.start_meta_stage`).

        A copy of `model.classifier` is trained, so that the saved MetaLabelNet holds no
        warm-up optimizer; its weights and optimizer state are copied into the model's.

        Args:
            model: the MetaLabelNet from `build(hp)`.
            x: `tf.data.Dataset` of `((x, y), (x_meta, y_meta))` batches; only `(x, y)`
                is used, with unlabeled examples (`y = -1`) weighted 0.
            epochs: int, the warm-up length.
            verbose: Keras verbosity. Defaults to `"auto"`.

        Returns:
            The warm-up's `keras.callbacks.History`.
        """
        warm = keras.models.clone_model(model.classifier)
        warm.set_weights(model.classifier.get_weights())
        schedule.compile_for_warm_up(warm, self.learning_rate, jit_compile=self.jit_compile)
        history = schedule.warm_up(warm, _warmup_batches(x), epochs, verbose=verbose)
        schedule.start_meta_stage(model, warm, meta_data=_meta_sample(x),
                                  noisy_data=_noisy_sample(x))  # fmt: skip
        return history

    def _check_training_data(self, x):
        if not isinstance(x, tf.data.Dataset):
            raise kt.errors.FatalTypeError(
                f"Invalid type for the training data. Received: {type(x).__name__}. Expected "
                "a `tf.data.Dataset` of `((x, y), (x_meta, y_meta))` batches; "
                "`mln_tf.data.with_meta(noisy, meta, batch_size)` builds it."
            )
        spec = x.element_spec
        if not (
            isinstance(spec, tuple)
            and len(spec) == 2
            and isinstance(spec[0], tuple)
            and len(spec[0]) == 2
            and isinstance(spec[1], tuple)
            and len(spec[1]) == 2
        ):
            raise kt.errors.FatalValueError(
                f"Invalid training data: elements of structure {spec}. Expected "
                "`((x, y), (x_meta, y_meta))` batches with the noisy labels `y`, which the "
                "warm-up needs; `mln_tf.data.with_meta(noisy, meta, batch_size)` builds them."
            )
        (images, _), _ = spec
        self._check_images(images.shape, "training data")
        first = next(iter(x.take(1)), None)
        if first is None:
            raise kt.errors.FatalValueError("The training data is empty.")
        (_, labels), (_, meta_labels) = first
        self._check_labels(labels.numpy(), "training data (first batch)", allow_unlabeled=True)
        self._check_labels(meta_labels.numpy(), "meta set (first batch)")

    def _check_validation_data(self, validation_data):
        if validation_data is None:
            raise kt.errors.FatalValueError(
                "Invalid value for argument `validation_data`. Received: None. Expected a "
                "`tf.data.Dataset` of clean `(x, y)` batches, disjoint from the meta set and "
                "from the test split: the objective is measured on it. "
                "`mln_tf.data.load_noisy` holds one out of the clean training examples: "
                "`NoisyData.validation`."
            )
        if not isinstance(validation_data, tf.data.Dataset):
            raise kt.errors.FatalTypeError(
                "Invalid type for argument `validation_data`. Received: "
                f"{type(validation_data).__name__}. Expected a `tf.data.Dataset` of `(x, y)` "
                "batches, for example `mln_tf.data.batched(validation, 256)`."
            )
        spec = validation_data.element_spec
        if not (isinstance(spec, tuple) and len(spec) == 2):
            raise kt.errors.FatalValueError(
                f"Invalid value for argument `validation_data`: elements of structure {spec}. "
                "Expected clean, labelled `(x, y)` batches."
            )
        self._check_images(spec[0].shape, "validation data")
        labels = [y.numpy().reshape(-1) for _, y in validation_data]
        labels = np.concatenate(labels) if labels else np.zeros((0,), np.int64)
        if labels.size == 0:
            raise kt.errors.FatalValueError(
                "Invalid value for argument `validation_data`: the dataset is empty. The "
                "objective needs at least one clean, labelled example."
            )
        self._check_labels(labels, "validation data")

    def _check_images(self, shape, what):
        if shape.rank is not None and tuple(shape[1:]) != self.input_shape:
            raise kt.errors.FatalValueError(
                f"The {what} has examples of shape {tuple(shape[1:])}, but the hypermodel "
                f"has input_shape={self.input_shape}. Pass batched data (for example through "
                "`mln_tf.data.batched`) of the hypermodel's image shape."
            )

    def _check_labels(self, labels, what, allow_unlabeled=False):
        lowest = -1 if allow_unlabeled else 0
        bad = labels[(labels < lowest) | (labels >= self.num_classes)]
        if bad.size:
            raise kt.errors.FatalValueError(
                f"The {what} holds the label {int(bad[0])}, outside [0, {self.num_classes}): "
                f"the hypermodel has num_classes={self.num_classes}. The data and the "
                "hypermodel must have the same classes."
            )


def _warmup_batches(dataset):
    """The noisy half of `((x, y), meta)` batches, unlabeled examples weighted 0."""

    def noisy_half(noisy, meta):
        images, labels = noisy
        labeled = labels >= 0
        return images, tf.where(labeled, labels, 0), tf.cast(labeled, "float32")

    return dataset.map(noisy_half)


def _check_range(name, value, *, minimum, exclusive=False, integer=False):
    """A fixed number, or a `(min, max)` pair to search; checked against `minimum`."""
    kind = int if integer else (int, float)

    def valid(number):
        return (
            isinstance(number, kind)
            and not isinstance(number, bool)
            and np.isfinite(number)
            and (number > minimum if exclusive else number >= minimum)
        )

    bound = f"{'greater than' if exclusive else 'at least'} {minimum}"
    expected = f"{'an integer' if integer else 'a number'} {bound}, or a (min, max) pair of them"
    if isinstance(value, (tuple, list)):
        if len(value) == 2 and all(valid(v) for v in value) and value[0] < value[1]:
            return tuple(value)
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r}. Expected "
            f"{expected} with min < max."
        )
    if valid(value):
        return value
    raise ValueError(
        f"Invalid value for argument `{name}`. Received: {name}={value!r}. Expected {expected}."
    )


def _declare(hp, name, space, default):
    if not isinstance(space, tuple):
        return hp.Fixed(name, space)
    low, high = space
    if isinstance(low, int) and isinstance(high, int) and name == "warmup_epochs":
        return hp.Int(name, low, high, default=low if default is None else default)
    # Learning rates span orders of magnitude: sample them on a log scale.
    log = name in ("generator_learning_rate", "virtual_lr") and low > 0
    if default is None or not low <= default <= high:
        default = low
    return hp.Float(name, low, high, sampling="log" if log else "linear", default=default)


# Batches that `generator_init="clean_posterior"` fits the generator on: a sample of the
# meta set, whose batches the training stream repeats, and of the noisy set.
META_SAMPLE_BATCHES = 20


def _meta_sample(x):
    return x.map(lambda noisy, meta: meta).take(META_SAMPLE_BATCHES)


def _noisy_sample(x):
    return x.map(lambda noisy, meta: (noisy[0], noisy[1])).take(META_SAMPLE_BATCHES)


def _uses_label_trust(options):
    """Whether κ sets V: with the given label as input, unless the posterior sets it."""
    return options.label_input and options.generator_init != "clean_posterior"
