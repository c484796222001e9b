"""Saving and restoring a model's random-generator states, which Keras' weights files skip.

Dropout draws its masks from a `keras.random.SeedGenerator`, whose state is a variable of the
model but not one of its `weights`: `save_weights` and `load_weights` leave it out, so a
reloaded model draws other masks than the original would have. A run resumed from a
checkpoint is the same as an uninterrupted one only if these states travel with it.

The functions work on a dict-like store, as `keras.layers.Layer.save_own_variables` gets
one: a plain `dict`, the store of a `.keras` or `.weights.h5` file, or an `np.load`-ed
`.npz` file.
"""

import keras

# The key of the state number `index` in a store.
KEY_FORMAT = "random_state_{index}"


def random_state_variables(model):
    """The random-generator states of a model (dropout seeds), which `save_weights` skips.

    Args:
        model: a `keras.Model`.

    Returns:
        A list of the model's non-trainable variables that are not among its weights, in
        the model's order.
    """
    weights = {id(variable) for variable in model.weights}
    return [v for v in model.non_trainable_variables if id(v) not in weights]


def save_random_states(model, store):
    """Writes the random-generator states of `model` into `store`.

    Args:
        model: a built `keras.Model`.
        store: a dict-like object, written as `store[key] = array`.

    Example:

    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5)])
    >>> store = {}
    >>> save_random_states(model, store)
    >>> sorted(store)
    ['random_state_0']
    """
    for index, variable in enumerate(random_state_variables(model)):
        store[KEY_FORMAT.format(index=index)] = keras.ops.convert_to_numpy(variable)


def load_random_states(model, store, strict=True):
    """Sets the random-generator states of `model` to those saved in `store`.

    Args:
        model: a built `keras.Model` with the same random layers as the saved one.
        store: a dict-like object written by `save_random_states`.
        strict: bool, whether a state missing from `store` is an error. With `False`,
            the states that `store` lacks keep their values. Defaults to `True`.

    Raises:
        ValueError: if `strict` and `store` lacks one of the model's states.
    """
    for index, variable in enumerate(random_state_variables(model)):
        key = KEY_FORMAT.format(index=index)
        if key in store:
            variable.assign(store[key])
        elif strict:
            raise ValueError(
                f"The store holds no random state {key!r} for {variable.path!r} of the model "
                f"{model.name!r}: it was saved from a model with fewer random layers, or "
                "without them. Save it with `save_random_states` from the same model."
            )
