"""MetaLabelNet's options: one definition that the model, the main job, the command line, the
Keras Tuner hypermodel and the report all read.

`MetaLabelNetOptions` is a frozen dataclass. Its class defaults, `PAPER`, are the authors'
algorithm; `RECOMMENDED`, the main job's and the tuner's defaults, turns on the options
that measured better (`docs/accuracy.md`). `docs/algorithm.md` gives each option's formula.

Which settings `compile` takes: those that only shape the training step (the `COMPILE`
group). The others shape the label generator, which `MetaLabelNet.__init__` builds, so
only the constructor takes them. `generator_learning_rate` sets the default generator
optimizer; an explicit `generator_optimizer=` replaces it.

Adding an option means adding a field here (with its `help`, its `choices` or its check)
and its test; the command line, `TrainConfig`, the tuner, the report and the README table
(`markdown_table()`) follow.

Example:

>>> RECOMMENDED.label_loss, PAPER.label_loss
('cross_entropy', 'reverse_kl')
>>> dataclasses.replace(RECOMMENDED, label_trust=10.0).label_trust
10.0
"""

import dataclasses
import math
import warnings

# Field groups: "compile" may be set in `MetaLabelNet.compile`; "generator" only in
# `MetaLabelNet.__init__`; "optimizer" sets the default generator optimizer.
COMPILE = "compile"
GENERATOR = "generator"
OPTIMIZER = "optimizer"

# The names an earlier release used, with their value translations.
DEPRECATED_NAMES = {"virtual_step": ("virtual_batch", {"all": "global", "local": "replica"})}


def _option(default, help, group, choices=None, check=None, flag=None):
    metadata = dict(help=help, group=group, choices=choices, check=check, flag=flag)
    return dataclasses.field(default=default, metadata=metadata)


def _positive(name, value):
    if not _is_number(value) or not value > 0 or math.isinf(value):
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r}. "
            "Expected a positive float."
        )
    return float(value)


def _non_negative(name, value):
    if not _is_number(value) or not value >= 0 or math.isinf(value):
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r}. "
            "Expected a non-negative float."
        )
    return float(value)


def _positive_integer(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r}. "
            "Expected a positive integer."
        )
    return value


def _boolean(name, value):
    if not isinstance(value, bool):
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r}. "
            "Expected True or False."
        )
    return value


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class MetaLabelNetOptions:
    """The settings of MetaLabelNet's method; the class defaults are the authors' algorithm.

    Attributes:
        virtual_lr: float, α, the virtual step's size. Defaults to 1.0, as in the authors'
            final code.
        entropy_weight: float, w, the weight of the entropy loss L_e in the classifier's
            update. Defaults to 1.0.
        generator_learning_rate: float, β, the learning rate of the default generator
            optimizer. Defaults to 1e-3 (the authors use 1e-2 on CIFAR-10).
        virtual_scope: `"all"` (the exact meta-gradient) or `"head"` (the virtual step moves
            only the last `head_layers` layers with weights, a cheaper approximation).
            Defaults to `"all"`.
        head_layers: int, how many trailing layers with weights `virtual_scope="head"`
            moves; nested models count their own layers. Defaults to 1.
        meta_gradient: `"nested_tapes"` (reverse mode through the inner gradient, the
            reference) or `"forward_mode"` (one Jacobian-vector product); both are exact.
            Defaults to `"nested_tapes"`.
        virtual_batch: `"global"` or `"replica"`, the batch of the virtual step under a
            `tf.distribute` strategy: the global batch's all-reduced gradient, or each
            replica's own shard (an approximation). Defaults to `"global"`.
        generator_input: `"frozen_features"`, h(x) from the copy of the classifier frozen
            after warm-up, or `"classifier_logits"`, the classifier's current logits f_θ(x)
            in inference mode, as constants. With the logits, W starts as the identity and
            b at 0 (unless `generator_init="random"`), so the generator starts from the
            classifier's own prediction. Defaults to `"frozen_features"`.
        label_input: bool, whether the generator also reads the given label. Defaults to
            `False`.
        label_trust: float, κ, the given label's initial logit bonus, V = κ·I (with
            `label_input` only; `generator_init="clean_posterior"` sets V instead).
            Defaults to 0.0.
        generator_init: `"random"`, `"classifier_head"` (W, b start as the warmed-up
            classifier's last layer) or `"clean_posterior"` (W, b fitted to the clean meta
            set's labels on its frozen features and, with `label_input`, V the log of the
            noise matrix estimated on the meta set, so that the first soft labels are the
            posterior p(y | x, ỹ)). Defaults to `"random"`.
        transition_estimate: how `generator_init="clean_posterior"` estimates the noise
            matrix T: `"meta_softmax"`, the warmed-up classifier's mean softmax over the
            meta images of each class (Gold Loss Correction's), or `"noisy_labels"`, the
            given labels of the noisy training set counted under the clean read-out's
            posterior, which needs the noisy data. Defaults to `"meta_softmax"`.
        readout_regularization: how `generator_init="clean_posterior"` sets the L2
            strength of the read-out it fits on the meta set: `"fixed"` (scikit-learn's
            C = 1) or `"cross_validated"` (C chosen among `label_generator.READOUT_CS` by
            5-fold cross-validated log-loss on the meta set, so that p(y | x) is not
            over-confident). Defaults to `"fixed"`.
        generator_refresh: `"never"` or `"each_epoch"`: at the end of every epoch the frozen
            feature extractor is cut again from the classifier and the generator's W and b
            are reset to the classifier's last layer (V, and what the meta-gradient taught
            it, is kept), so that each epoch's soft labels start at the posterior
            p_θ(y | x)·exp(V[ỹ, y]) of the classifier as it then is. Needs
            `generator_input="frozen_features"` cut from the classifier at the input of its
            last layer, and batches without cached features. Defaults to `"never"`.
        loss_scale: `"mean"` (L_c and L_e averaged over B×C) or `"sum_over_classes"`
            (summed over classes, averaged over the batch). Defaults to `"mean"`.
        label_loss: `"reverse_kl"`, KL(p‖ŷ), or `"cross_entropy"`, −Σ ŷ log p. Defaults to
            `"reverse_kl"`.
        clean_weight: float, λ, the weight of the meta batch's cross-entropy in the
            classifier's own update (not in the virtual step). Defaults to 0.0: the
            classifier learns from the soft labels only.
        meta_batch_pass: `"separate"` (the meta batch runs through the classifier on its
            own: at θ̂ for the meta loss, and again at θ for the clean term) or `"shared"`
            (with `virtual_scope="head"` and one head layer: one forward pass of the noisy
            and the meta batch together at θ, whose meta-batch features the meta loss and
            the clean term share; the meta batch then shares the pass's dropout masks and
            batch-normalisation statistics). Defaults to `"separate"`.
    """

    virtual_lr: float = _option(1.0, "α, the virtual step's size", COMPILE, check=_positive)
    entropy_weight: float = _option(
        1.0, "w, the weight of the entropy loss", COMPILE, check=_non_negative
    )
    generator_learning_rate: float = _option(
        1e-3, "β, the label generator's learning rate", OPTIMIZER, check=_positive,
        flag="--generator-lr",
    )  # fmt: skip
    virtual_scope: str = _option(
        "all", "the weights the virtual step moves: all (exact) or the last layer(s)",
        COMPILE, choices=("all", "head"),
    )  # fmt: skip
    head_layers: int = _option(
        1, "layers with weights that the 'head' virtual scope moves", COMPILE,
        check=_positive_integer,
    )  # fmt: skip
    meta_gradient: str = _option(
        "nested_tapes", "how the second-order term is computed (both exact)", COMPILE,
        choices=("nested_tapes", "forward_mode"),
    )  # fmt: skip
    virtual_batch: str = _option(
        "global", "the virtual step's batch under a tf.distribute strategy", COMPILE,
        choices=("global", "replica"),
    )  # fmt: skip
    generator_input: str = _option(
        "frozen_features", "what the generator reads: the frozen warm-up features or the "
        "classifier's current logits", GENERATOR,
        choices=("frozen_features", "classifier_logits"),
    )  # fmt: skip
    label_input: bool = _option(
        False, "the generator also reads the given label", GENERATOR, check=_boolean
    )
    label_trust: float = _option(
        0.0, "κ, the given label's initial logit bonus (with label_input, not with "
        "clean_posterior)", GENERATOR,
        check=_non_negative,
    )  # fmt: skip
    generator_init: str = _option(
        "random", "the generator's first weights", GENERATOR,
        choices=("random", "classifier_head", "clean_posterior"),
    )  # fmt: skip
    transition_estimate: str = _option(
        "meta_softmax", "how clean_posterior estimates the noise matrix T", GENERATOR,
        choices=("meta_softmax", "noisy_labels"),
    )  # fmt: skip
    readout_regularization: str = _option(
        "fixed", "how clean_posterior chooses the read-out's L2 strength: fixed (C=1) or "
        "by cross-validated log-loss on the meta set", GENERATOR,
        choices=("fixed", "cross_validated"),
    )  # fmt: skip
    generator_refresh: str = _option(
        "never", "when the generator restarts from the classifier's current features and "
        "last layer, keeping V: never or at each epoch's end", GENERATOR,
        choices=("never", "each_epoch"),
    )  # fmt: skip
    loss_scale: str = _option(
        "mean", "the reduction of the soft-label and entropy losses", COMPILE,
        choices=("mean", "sum_over_classes"),
    )  # fmt: skip
    label_loss: str = _option(
        "reverse_kl", "the classifier's loss on the soft labels", COMPILE,
        choices=("reverse_kl", "cross_entropy"),
    )  # fmt: skip
    clean_weight: float = _option(
        0.0, "λ, the weight of the meta batch's cross-entropy in the classifier's update",
        COMPILE, check=_non_negative,
    )  # fmt: skip
    meta_batch_pass: str = _option(
        "separate", "the meta batch's forward passes: separate, or shared with the noisy "
        "batch's (virtual_scope='head', one head layer)", COMPILE,
        choices=("separate", "shared"),
    )  # fmt: skip

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            choices, check = field.metadata["choices"], field.metadata["check"]
            if choices is not None and value not in choices:
                raise ValueError(
                    f"Invalid value for argument `{field.name}`. Received: "
                    f"{field.name}={value!r}. Expected one of "
                    f"{', '.join(repr(choice) for choice in choices)}."
                )
            if check is not None:
                object.__setattr__(self, field.name, check(field.name, value))
        if self.meta_batch_pass == "shared" and (
            self.virtual_scope != "head" or self.head_layers != 1
            or self.meta_gradient != "nested_tapes"
        ):  # fmt: skip
            raise ValueError(
                "Invalid value for argument `meta_batch_pass`. Received: "
                f"meta_batch_pass='shared' with virtual_scope={self.virtual_scope!r}, "
                f"head_layers={self.head_layers!r} and meta_gradient={self.meta_gradient!r}. "
                "Expected virtual_scope='head', head_layers=1 and "
                "meta_gradient='nested_tapes': the meta batch's features can only be shared "
                "when the virtual step moves the output layer alone."
            )

        if self.generator_refresh != "never" and self.generator_input != "frozen_features":
            raise ValueError(
                "Invalid value for argument `generator_refresh`. Received: "
                f"generator_refresh={self.generator_refresh!r} with "
                f"generator_input={self.generator_input!r}. Expected "
                "generator_input='frozen_features': the refresh cuts the frozen feature "
                "extractor again from the classifier."
            )

    def replace(self, **changes):
        """A copy with `changes`; names of an earlier release are translated with a warning.

        Raises:
            TypeError: for a name that is not an option.
        """
        changes = translate_deprecated(changes)
        unknown = sorted(set(changes) - set(NAMES))
        if unknown:
            raise TypeError(
                f"Unknown MetaLabelNet option(s): {', '.join(unknown)}. The options are: "
                f"{', '.join(NAMES)}."
            )
        return dataclasses.replace(self, **changes)

    def changes_from(self, base):
        """The options whose values differ from `base`'s, as a dict."""
        return {
            name: getattr(self, name)
            for name in NAMES
            if getattr(self, name) != getattr(base, name)
        }

    def to_dict(self):
        return dataclasses.asdict(self)


NAMES = tuple(field.name for field in dataclasses.fields(MetaLabelNetOptions))
FIELDS = {field.name: field for field in dataclasses.fields(MetaLabelNetOptions)}
COMPILE_NAMES = tuple(name for name in NAMES if FIELDS[name].metadata["group"] == COMPILE)

PAPER = MetaLabelNetOptions()
# Measured better than the authors' algorithm and plain cross-entropy on Fashion-MNIST
# under the four noise settings of docs/accuracy.md.
RECOMMENDED = dataclasses.replace(
    PAPER,
    entropy_weight=0.0,
    virtual_scope="head",
    label_input=True,
    generator_init="clean_posterior",
    label_trust=5.0,  # used when generator_init is set back to "classifier_head"
    loss_scale="sum_over_classes",
    label_loss="cross_entropy",
    clean_weight=1.0,
)


def translate_deprecated(settings):
    """`settings` with the option names of an earlier release renamed, with a warning."""
    settings = dict(settings)
    for old, (new, values) in DEPRECATED_NAMES.items():
        if old in settings:
            value = settings.pop(old)
            translated = values.get(value, value)
            warnings.warn(
                f"`{old}={value!r}` is deprecated; use `{new}={translated!r}`.",
                DeprecationWarning,
                stacklevel=3,
            )
            settings[new] = translated
    return settings


def split(settings):
    """Splits a dict of settings into MetaLabelNet options and the rest.

    Returns:
        `(options, rest)`, two dicts.
    """
    settings = translate_deprecated(settings)
    options = {name: value for name, value in settings.items() if name in FIELDS}
    rest = {name: value for name, value in settings.items() if name not in FIELDS}
    return options, rest


def add_arguments(parser, defaults=RECOMMENDED):
    """Adds a command-line flag for each option to an `argparse` parser or group.

    Each flag's destination is the option's name, its default `None` (unset), and its help
    the option's description with its default in `defaults`.
    """
    import argparse

    for name in NAMES:
        metadata = FIELDS[name].metadata
        flags = ["--" + name.replace("_", "-")]
        if metadata["flag"]:
            flags.append(metadata["flag"])
        default = getattr(defaults, name)
        help_text = f"{metadata['help']} (default: {default}; the paper: {getattr(PAPER, name)})"
        if isinstance(default, bool):
            parser.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)  # fmt: skip
        else:
            parser.add_argument(*flags, dest=name, type=type(default), default=None,
                                choices=metadata["choices"], help=help_text)  # fmt: skip


def markdown_table(columns=(("the paper", PAPER), ("the defaults", RECOMMENDED))):
    """A Markdown table of every option, with its value in each column's options."""
    header = "| option | " + " | ".join(title for title, _ in columns) + " | what it does |"
    lines = [header, "|" + "---|" * (len(columns) + 2)]
    for name in NAMES:
        values = " | ".join(f"`{getattr(options, name)!r}`" for _, options in columns)
        lines.append(f"| `{name}` | {values} | {FIELDS[name].metadata['help']} |")
    return "\n".join(lines)
