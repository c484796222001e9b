"""`EpochCheckpoint`: an interrupted fit resumes to the uninterrupted result, bit for bit."""

import json
import shutil

import keras
import numpy as np
import pytest

from mln_tf.callbacks import EpochCheckpoint

EPOCHS = 4
INTERRUPTED_AFTER = 2


def data():
    rng = np.random.default_rng(0)
    images = rng.random((32, 6), dtype=np.float32)
    return images, (images.sum(axis=1) > 3).astype("int32")


def dropout_classifier(seed):
    """A small classifier whose dropout draws from the global seed, which `seed` sets."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(2),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.optimizer.build(model.trainable_variables)
    return model


def fit(model, checkpoint, initial_epoch=0):
    images, labels = data()
    return model.fit(images, labels, batch_size=8, shuffle=False, epochs=EPOCHS,
                     initial_epoch=initial_epoch, callbacks=[checkpoint], verbose=0)  # fmt: skip


@pytest.fixture
def runs(tmp_path):
    """An uninterrupted run, and the checkpoint folder of one stopped after 2 epochs."""
    uninterrupted = dropout_classifier(seed=0)
    history = fit(uninterrupted, EpochCheckpoint(str(tmp_path / "uninterrupted")))
    interrupted = dropout_classifier(seed=0)
    stopped = EpochCheckpoint(str(tmp_path / "interrupted"))
    images, labels = data()
    interrupted.fit(images, labels, batch_size=8, shuffle=False, epochs=INTERRUPTED_AFTER,
                    callbacks=[stopped], verbose=0)  # fmt: skip
    return uninterrupted, history.history, tmp_path / "interrupted"


def assert_same_weights(model, expected):
    for got, want in zip(model.get_weights(), expected.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_restore_then_fit_continues_bit_for_bit(runs):
    uninterrupted, history, folder = runs
    # Other initial weights and another dropout seed: the checkpoint must restore both.
    resumed = dropout_classifier(seed=1)
    checkpoint = EpochCheckpoint(str(folder))

    epoch, restored_history = checkpoint.restore(resumed)
    fit(resumed, checkpoint, initial_epoch=epoch)

    assert epoch == INTERRUPTED_AFTER
    assert restored_history["epoch"] == [1, 2]
    assert restored_history["loss"] == history["loss"][:INTERRUPTED_AFTER]
    assert_same_weights(resumed, uninterrupted)
    assert checkpoint.history["epoch"] == [1, 2, 3, 4]
    assert checkpoint.history["loss"] == history["loss"]


def test_fit_alone_resumes_as_backup_and_restore_does(runs, tmp_path):
    uninterrupted, history, folder = runs
    resumed = dropout_classifier(seed=1)
    checkpoint = EpochCheckpoint(str(folder))

    resumed_history = fit(resumed, checkpoint)

    assert len(resumed_history.history["loss"]) == EPOCHS - INTERRUPTED_AFTER
    assert resumed_history.history["loss"] == history["loss"][INTERRUPTED_AFTER:]
    assert_same_weights(resumed, uninterrupted)


def test_without_the_random_states_the_resumed_run_differs(runs, tmp_path):
    # The control for the tests above: the dropout masks do decide the result.
    uninterrupted, _, folder = runs
    without = tmp_path / "without_random_states"
    shutil.copytree(folder, without)
    np.savez(without / f"epoch{INTERRUPTED_AFTER}.random.npz")
    resumed = dropout_classifier(seed=1)
    checkpoint = EpochCheckpoint(str(without))

    with pytest.raises(ValueError, match="The store holds no random state 'random_state_0'"):
        checkpoint.restore(resumed)
    # Weights and optimizer were restored, the dropout state was not.
    fit(resumed, EpochCheckpoint(str(tmp_path / "other")), initial_epoch=INTERRUPTED_AFTER)
    differences = [
        np.abs(got - want).max()
        for got, want in zip(resumed.get_weights(), uninterrupted.get_weights(), strict=True)
    ]
    assert max(differences) > 0


def test_the_folder_holds_the_last_epoch_and_the_history(runs, tmp_path):
    _, history, _ = runs
    folder = tmp_path / "uninterrupted"

    state = json.loads((folder / "state.json").read_text())

    assert sorted(path.name for path in folder.iterdir()) == [
        f"epoch{EPOCHS}.random.npz",
        f"epoch{EPOCHS}.weights.h5",
        "state.json",
    ]
    assert state == {"epoch": EPOCHS, "history": {"epoch": [1, 2, 3, 4], "loss": history["loss"]}}
    with np.load(folder / f"epoch{EPOCHS}.random.npz") as store:
        assert sorted(store) == ["random_state_0"]
    assert EpochCheckpoint(str(folder)).read_state() == state


def test_without_a_checkpoint_restore_changes_nothing(tmp_path):
    model = dropout_classifier(seed=0)
    before = model.get_weights()
    checkpoint = EpochCheckpoint(str(tmp_path / "empty"))

    assert checkpoint.read_state() is None
    assert checkpoint.restore(model, initial_epoch=3) == (3, {})
    for got, want in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_checkpoint_saved_before_training_restores_epoch_0(tmp_path):
    model = dropout_classifier(seed=0)
    EpochCheckpoint(str(tmp_path)).save(model, epoch=0)
    other = dropout_classifier(seed=1)

    epoch, history = EpochCheckpoint(str(tmp_path)).restore(other)

    assert (epoch, history) == (0, {})
    assert_same_weights(other, model)
