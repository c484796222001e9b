"""Dropout's random-generator states are saved to a store and restored from it."""

import keras
import numpy as np
import pytest

from mln_tf.random_state import load_random_states, random_state_variables, save_random_states


def dropout_model():
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(8, name="dense"),
            keras.layers.Dropout(0.5, seed=3, name="first_dropout"),
            keras.layers.Dropout(0.5, seed=4, name="second_dropout"),
        ]
    )


def draw_masks(model, count=3):
    """The dropout patterns of `count` training calls: which outputs were zeroed."""
    ones = np.ones((2, 64), np.float32)
    return [keras.ops.convert_to_numpy(model(ones, training=True)) == 0 for _ in range(count)]


def test_random_state_variables_are_the_seed_states_that_weights_skip():
    model = dropout_model()

    states = random_state_variables(model)

    assert len(states) == 2
    assert all(id(state) not in {id(weight) for weight in model.weights} for state in states)
    # Each dropout layer's generator starts from its seed.
    assert [int(keras.ops.convert_to_numpy(state)[0]) for state in states] == [3, 4]


def test_loaded_states_draw_the_same_masks_again():
    model = dropout_model()
    draw_masks(model, count=1)  # move the states away from their initial values
    store = {}
    save_random_states(model, store)
    expected = draw_masks(model)

    load_random_states(model, store)
    again = draw_masks(model)

    assert sorted(store) == ["random_state_0", "random_state_1"]
    for saved, state in zip(store.values(), random_state_variables(model)):
        assert saved.shape == tuple(state.shape)
    for got, want in zip(again, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    # The masks do change from call to call: equality above is not trivially true.
    assert not np.array_equal(expected[0], expected[1])


def test_states_load_into_another_model_of_the_same_layers():
    model = dropout_model()
    draw_masks(model, count=2)
    store = {}
    save_random_states(model, store)
    expected = draw_masks(model)
    other = dropout_model()
    other.set_weights(model.get_weights())

    load_random_states(other, store)

    for got, want in zip(draw_masks(other), expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_store_without_the_states_is_an_error_unless_not_strict():
    model = dropout_model()
    before = [keras.ops.convert_to_numpy(state) for state in random_state_variables(model)]

    with pytest.raises(ValueError, match="The store holds no random state 'random_state_0'"):
        load_random_states(model, {})
    load_random_states(model, {"random_state_1": np.array([7, 9], "int64")}, strict=False)

    first, second = (keras.ops.convert_to_numpy(s) for s in random_state_variables(model))
    np.testing.assert_array_equal(first, before[0])
    np.testing.assert_array_equal(second, [7, 9])
