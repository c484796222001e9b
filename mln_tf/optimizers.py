"""Keras optimizers whose updates are PyTorch's: SGD and Adam with coupled weight decay.

The authors train the classifier with `torch.optim.SGD(lr, momentum=0.9, weight_decay=1e-4)`
and the label generator with `torch.optim.Adam(lr, weight_decay=1e-4)`. PyTorch couples the
weight decay into the gradient, d = g + wd·θ, before the momentum buffer and before Adam's
moments; Keras' `weight_decay` is decoupled, θ −= lr·wd·θ outside them. With momentum 0.9 the
coupled decay accumulates in the buffer, so it acts about 1 / (1 − 0.9) = 10 times as strongly
as the decoupled one at the same `weight_decay`; in Adam it is divided by √v̂ like the
gradient. The two optimizers differ from Keras' in two more ways: PyTorch's SGD keeps the
learning rate out of its momentum buffer (it matters when the rate changes), and PyTorch's
Adam adds ε = 1e-8 to the bias-corrected √v̂, where Keras adds 1e-7 to √v before correcting.
"""

import keras
from keras import ops

# PyTorch's default ε of Adam, added to the bias-corrected √v̂.
PYTORCH_ADAM_EPSILON = 1e-8
PAPER_WEIGHT_DECAY = 1e-4
PAPER_MOMENTUM = 0.9


def _check_fraction(name, value, upper_inclusive):
    upper_ok = value <= 1 if upper_inclusive else value < 1
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or not upper_ok:
        interval = "[0, 1]" if upper_inclusive else "[0, 1)"
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r}. "
            f"Expected a float in {interval}."
        )


def _check_non_negative(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(
            f"Invalid value for argument `{name}`. Received: {name}={value!r}. "
            "Expected a non-negative float."
        )


def _check_no_decoupled_decay(class_name, weight_decay):
    if weight_decay is not None:
        raise ValueError(
            f"Invalid value for argument `weight_decay`. Received: weight_decay={weight_decay!r}. "
            f"Expected None: {class_name} applies PyTorch's coupled weight decay; pass "
            "`coupled_weight_decay` instead, or use a Keras optimizer for decoupled decay."
        )


def _constant(value, dtype):
    # `ops.cast` of a Python float rounds it to float32 first; float64 variables need it exact.
    return ops.convert_to_tensor(value, dtype=dtype)


class _CoupledOptimizer(keras.optimizers.Optimizer):
    """Shared by the two optimizers: the coupled decay d = g + wd·θ and its argument."""

    def __init__(self, learning_rate, coupled_weight_decay, weight_decay, **kwargs):
        _check_non_negative("coupled_weight_decay", coupled_weight_decay)
        _check_no_decoupled_decay(type(self).__name__, weight_decay)
        # Keras' own decoupled decay stays off: `weight_decay=None` in the base class.
        super().__init__(learning_rate=learning_rate, weight_decay=None, **kwargs)
        self.coupled_weight_decay = float(coupled_weight_decay)

    def _decayed_gradient(self, gradient, variable):
        gradient = ops.cast(gradient, variable.dtype)
        # `exclude_from_weight_decay()` of the base class applies here too.
        if self.coupled_weight_decay == 0 or not self._use_weight_decay(variable):
            return gradient
        decay = _constant(self.coupled_weight_decay, variable.dtype)
        return ops.add(gradient, ops.multiply(decay, variable))

    def get_config(self):
        config = super().get_config()
        config.update({"coupled_weight_decay": self.coupled_weight_decay})
        return config


@keras.saving.register_keras_serializable(package="mln_tf")
class CoupledSGD(_CoupledOptimizer):
    """SGD with momentum and coupled weight decay, step for step `torch.optim.SGD`.

    It equals `torch.optim.SGD(lr, momentum, weight_decay)` with PyTorch's defaults for the
    rest (dampening 0, no Nesterov). The momentum buffer holds gradients, not steps, so a
    change of the learning rate applies to the whole buffer at once, as in PyTorch.

    Args:
        learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`.
            Defaults to `0.01`.
        momentum: float in [0, 1]. Defaults to `0.0`.
        coupled_weight_decay: non-negative float, PyTorch's `weight_decay`: added to the
            gradient as `coupled_weight_decay * variable` before the momentum buffer.
            Defaults to `0.0`.
        weight_decay: must be `None`. Keras' decoupled decay is not applied on top.
        **kwargs: the other arguments of `keras.optimizers.Optimizer` (`clipnorm`,
            `use_ema`, `name`, ...).

    Raises:
        ValueError: if `momentum` or `coupled_weight_decay` is out of range, or
            `weight_decay` is set.

    Formula:

    ```
    d = g + coupled_weight_decay * θ
    buffer = momentum * buffer + d      (the first step: buffer = d)
    θ = θ - learning_rate * buffer
    ```

    Example:

    >>> variable = keras.Variable([1.0])
    >>> optimizer = CoupledSGD(0.1, momentum=0.9, coupled_weight_decay=0.5)
    >>> optimizer.apply([keras.ops.convert_to_tensor([1.0])], [variable])
    >>> round(float(variable[0]), 6)  # 1 - 0.1 * (1 + 0.5 * 1)
    0.85
    """

    def __init__(
        self,
        learning_rate=0.01,
        momentum=0.0,
        coupled_weight_decay=0.0,
        weight_decay=None,
        name=None,
        **kwargs,
    ):
        _check_fraction("momentum", momentum, upper_inclusive=True)
        super().__init__(learning_rate, coupled_weight_decay, weight_decay, name=name, **kwargs)
        self.momentum = float(momentum)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentum_buffers = []
        if self.momentum != 0:
            self.momentum_buffers = self.add_optimizer_variables(variables, "momentum_buffer")

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        direction = self._decayed_gradient(gradient, variable)
        if self.momentum != 0:
            buffer = self.momentum_buffers[self._get_variable_index(variable)]
            momentum = _constant(self.momentum, variable.dtype)
            # A zero buffer makes the first step buffer = d, PyTorch's initialisation.
            self.assign(buffer, ops.add(ops.multiply(momentum, buffer), direction))
            direction = buffer
        self.assign_sub(variable, ops.multiply(learning_rate, direction))

    def get_config(self):
        config = super().get_config()
        config.update({"momentum": self.momentum})
        return config


@keras.saving.register_keras_serializable(package="mln_tf")
class CoupledAdam(_CoupledOptimizer):
    """Adam with coupled weight decay and PyTorch's ε, step for step `torch.optim.Adam`.

    It equals `torch.optim.Adam(lr, betas=(beta_1, beta_2), eps=epsilon, weight_decay)`
    without AMSGrad: the decay goes into the moments (this is not AdamW), and ε is added
    after the bias correction of √v.

    Args:
        learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`.
            Defaults to `0.001`.
        beta_1: float in [0, 1), the decay of the first moment. Defaults to `0.9`.
        beta_2: float in [0, 1), the decay of the second moment. Defaults to `0.999`.
        epsilon: non-negative float added to the bias-corrected √v̂. Defaults to `1e-8`,
            PyTorch's.
        coupled_weight_decay: non-negative float, PyTorch's `weight_decay`: added to the
            gradient as `coupled_weight_decay * variable` before the moments.
            Defaults to `0.0`.
        weight_decay: must be `None`. Keras' decoupled decay is not applied on top.
        **kwargs: the other arguments of `keras.optimizers.Optimizer`.

    Raises:
        ValueError: if an argument is out of range, or `weight_decay` is set.

    Formula:

    ```
    d = g + coupled_weight_decay * θ
    m = beta_1 * m + (1 - beta_1) * d
    v = beta_2 * v + (1 - beta_2) * d²
    θ = θ - learning_rate / (1 - beta_1^t) * m / (sqrt(v) / sqrt(1 - beta_2^t) + epsilon)
    ```

    Example:

    >>> variable = keras.Variable([1.0])
    >>> optimizer = CoupledAdam(0.1)
    >>> optimizer.apply([keras.ops.convert_to_tensor([1e-9])], [variable])
    >>> round(float(variable[0]), 6)  # 1 - 0.1 * 1e-9 / (1e-9 + 1e-8)
    0.990909
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=PYTORCH_ADAM_EPSILON,
        coupled_weight_decay=0.0,
        weight_decay=None,
        name=None,
        **kwargs,
    ):
        _check_fraction("beta_1", beta_1, upper_inclusive=False)
        _check_fraction("beta_2", beta_2, upper_inclusive=False)
        _check_non_negative("epsilon", epsilon)
        super().__init__(learning_rate, coupled_weight_decay, weight_decay, name=name, **kwargs)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.first_moments, self.second_moments = self.add_optimizer_variables(
            variables, ["first_moment", "second_moment"]
        )

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        learning_rate = ops.cast(learning_rate, dtype)
        direction = self._decayed_gradient(gradient, variable)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = _constant(self.beta_1, dtype), _constant(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        first_moment, second_moment = self.first_moments[index], self.second_moments[index]

        self.assign_add(first_moment, ops.multiply(1 - beta_1, direction - first_moment))
        self.assign_add(
            second_moment, ops.multiply(1 - beta_2, ops.square(direction) - second_moment)
        )
        step_size = learning_rate / (1 - ops.power(beta_1, step))
        bias_correction_2_sqrt = ops.sqrt(1 - ops.power(beta_2, step))
        denominator = ops.sqrt(second_moment) / bias_correction_2_sqrt + _constant(
            self.epsilon, dtype
        )
        self.assign_sub(variable, step_size * first_moment / denominator)

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon})
        return config


def paper_classifier_optimizer(learning_rate=1e-2):
    """The classifier's optimizer of the authors' code, with PyTorch's semantics.

    It matches their `torch.optim.SGD(lr, momentum=0.9, weight_decay=1e-4)`: coupled
    weight decay, the learning rate outside the momentum buffer.

    Args:
        learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`.
            Defaults to `1e-2`.

    Returns:
        A `CoupledSGD` with momentum 0.9 and coupled weight decay 1e-4.

    Example:

    >>> optimizer = paper_classifier_optimizer(1e-3)
    >>> optimizer.momentum, optimizer.coupled_weight_decay
    (0.9, 0.0001)
    """
    return CoupledSGD(
        learning_rate, momentum=PAPER_MOMENTUM, coupled_weight_decay=PAPER_WEIGHT_DECAY
    )


def paper_generator_optimizer(learning_rate=1e-3):
    """The label generator's optimizer of the authors' code, with PyTorch's semantics.

    It matches their `torch.optim.Adam(lr, weight_decay=1e-4)`: coupled weight decay and
    ε = 1e-8 added after the bias correction.

    Args:
        learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`,
            β in the paper: 1e-2 for CIFAR-10, 1e-3 otherwise. Defaults to `1e-3`.

    Returns:
        A `CoupledAdam` with coupled weight decay 1e-4.

    Example:

    >>> optimizer = paper_generator_optimizer()
    >>> optimizer.epsilon, optimizer.coupled_weight_decay
    (1e-08, 0.0001)
    """
    return CoupledAdam(learning_rate, coupled_weight_decay=PAPER_WEIGHT_DECAY)
