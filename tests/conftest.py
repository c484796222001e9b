import os

# Quieter TensorFlow logs in test output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts from a clean Keras session, seeded, in float32."""
    keras.backend.clear_session()
    keras.config.set_floatx("float32")
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_floatx("float32")
