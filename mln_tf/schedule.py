"""The two-stage schedule: a cross-entropy warm-up, then MetaLabelNet's meta stage.

The main job (`mln_tf.train`), the Keras Tuner hypermodel (`mln_tf.tuner`) and the notebooks
all run it through these functions:

```python
classifier = compile_for_warm_up(mln_tf.classifiers.fashion_cnn(10), learning_rate=1e-2)
warm_up(classifier, noisy_batches, epochs=3)
model = mln_tf.MetaLabelNet(classifier, feature_layer="features",
                            options=mln_tf.options.RECOMMENDED)
model.compile(optimizer=mln_tf.optimizers.paper_classifier_optimizer(1e-2))
start_meta_stage(model, classifier, meta_data=meta)  # the generator starts from the meta set
meta_stage(model, mln_tf.data.with_meta(noisy, meta, 64), first_epoch=3, last_epoch=6)
```

The meta stage continues the warm-up: the classifier keeps its weights and its optimizer's
state (SGD's momentum and step count), the feature extractor is cut from the warmed-up
weights, and the generator starts as its options say. Epochs are counted from the warm-up's
first, so that one learning-rate schedule spans both stages.
"""

import keras

from mln_tf.optimizers import paper_classifier_optimizer


def compile_for_warm_up(classifier, learning_rate=1e-2, loss=None, jit_compile="auto"):
    """Compiles a classifier for the warm-up (or any plain stage) and builds its optimizer.

    Args:
        classifier: a `keras.Model` that outputs logits.
        learning_rate: float, the first learning rate of the authors' SGD. Defaults to 1e-2.
        loss: a Keras loss. Defaults to sparse categorical cross-entropy on logits.
        jit_compile: bool or `"auto"`. Defaults to `"auto"`.

    Returns:
        The classifier, compiled, with its optimizer built (so that a checkpoint's optimizer
        state can be loaded into it, or copied into the meta stage's).
    """
    classifier.compile(
        optimizer=paper_classifier_optimizer(learning_rate),
        loss=loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    classifier.optimizer.build(classifier.trainable_variables)
    return classifier


def fit_epochs(model, batches, first_epoch, last_epoch, learning_rate=None, callbacks=(),
               **fit_kwargs):  # fmt: skip
    """Fits epochs `[first_epoch, last_epoch)` of the schedule, one `fit` call.

    Args:
        model: a compiled `keras.Model` (a classifier or a `MetaLabelNet`).
        batches: a batched `tf.data.Dataset`, already shuffled.
        first_epoch, last_epoch: int, 0-based epochs counted from the warm-up's first.
        learning_rate: optional callable `epoch -> float`, the classifier's learning rate
            in each 0-based epoch. Defaults to `None`, the optimizer's own.
        callbacks: Keras callbacks.
        **fit_kwargs: passed to `fit` (`steps_per_epoch`, `validation_data`, `verbose`...).

    Returns:
        The `keras.callbacks.History`.
    """
    callbacks = list(callbacks)
    if learning_rate is not None:
        callbacks.insert(0, keras.callbacks.LearningRateScheduler(learning_rate))
    fit_kwargs.setdefault("shuffle", False)  # the datasets are shuffled already
    return model.fit(batches, initial_epoch=first_epoch, epochs=last_epoch,
                     callbacks=callbacks, **fit_kwargs)  # fmt: skip


def warm_up(classifier, noisy_batches, epochs, learning_rate=None, callbacks=(), **fit_kwargs):
    """Stage 1: trains a classifier compiled by `compile_for_warm_up` on the noisy labels.

    Args:
        classifier: the compiled classifier.
        noisy_batches: batched `(x, y)` or `(x, y, sample_weight)`, shuffled.
        epochs: int, the warm-up's epochs.
        learning_rate: optional callable `epoch -> float`. Defaults to a constant rate.
        callbacks: Keras callbacks.
        **fit_kwargs: passed to `fit`.

    Returns:
        The `keras.callbacks.History`.
    """
    return fit_epochs(classifier, noisy_batches, 0, epochs, learning_rate, callbacks,
                      **fit_kwargs)  # fmt: skip


def start_meta_stage(model, warmed_classifier, meta_data=None, noisy_data=None):
    """Starts the meta stage from a warmed-up classifier.

    Copies the warmed-up weights into `model.classifier` (unless it is that classifier),
    cuts the frozen feature extractor from them again, starts the label generator as the
    model's options say, and continues the warm-up optimizer's state (SGD's momentum and
    step count) in `model.optimizer`.

    Args:
        model: a compiled `MetaLabelNet`.
        warmed_classifier: the classifier after `warm_up`, with its optimizer.
        meta_data: the clean meta set, which `generator_init="clean_posterior"` fits the
            generator on (`MetaLabelNet.initialize_label_generator`). Defaults to `None`.
        noisy_data: the noisy training set, for `transition_estimate="noisy_labels"`.
            Defaults to `None`.

    Raises:
        ValueError: if the two optimizers' states do not match (another optimizer class,
            or another classifier).
    """
    if warmed_classifier is not model.classifier:
        model.classifier.set_weights(warmed_classifier.get_weights())
    # MetaLabelNet's frozen copy and generator; a meta-learned baseline may have neither.
    if hasattr(model, "refresh_feature_extractor"):
        model.refresh_feature_extractor()
        model.initialize_label_generator(meta_data, noisy_data)
    continue_optimizer(warmed_classifier.optimizer, model.optimizer)


def continue_optimizer(source, target):
    """Copies an optimizer's state (SGD's momentum and step count) into another one.

    Args:
        source: the warm-up's optimizer, or `None` (nothing to copy).
        target: the next stage's optimizer, of the same class, built over the same
            classifier's variables; or `None`.

    Raises:
        ValueError: if the two optimizers' states do not match.
    """
    if source is None or target is None:
        return
    source_shapes = [tuple(variable.shape) for variable in source.variables]
    target_shapes = [tuple(variable.shape) for variable in target.variables]
    if type(source) is not type(target) or source_shapes != target_shapes:
        raise ValueError(
            f"The warm-up's optimizer ({type(source).__name__}, {len(source_shapes)} "
            f"variables) cannot continue in the next stage's ({type(target).__name__}, "
            f"{len(target_shapes)} variables): compile both with the same optimizer class "
            "over the same classifier."
        )
    for variable, value in zip(target.variables, source.variables):
        variable.assign(value)


def meta_stage(model, batches, first_epoch, last_epoch, learning_rate=None, callbacks=(),
               **fit_kwargs):  # fmt: skip
    """Stage 2: fits a `MetaLabelNet` for epochs `[first_epoch, last_epoch)`.

    Args:
        model: a `MetaLabelNet` after `start_meta_stage`.
        batches: `((x, y), (x_meta, y_meta))` batches from `mln_tf.data.with_meta`.
        first_epoch, last_epoch: int, counted from the warm-up's first epoch.
        learning_rate: optional callable `epoch -> float`, the classifier's learning rate.
        callbacks: Keras callbacks.
        **fit_kwargs: passed to `fit`.

    Returns:
        The `keras.callbacks.History`.
    """
    return fit_epochs(model, batches, first_epoch, last_epoch, learning_rate, callbacks,
                      **fit_kwargs)  # fmt: skip
