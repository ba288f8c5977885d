"""Shared test set-up: quiet TensorFlow, seeded and isolated tests.

The backend comes from `KERAS_BACKEND` (default TensorFlow); `.ci/test`
runs the suite once per backend. Tests that only make sense on TensorFlow
skip themselves with `pytest.mark.skipif(keras.backend.backend() != ...)`.
"""

from __future__ import annotations

import os

# Must be set before TensorFlow is imported (keras imports it on the TF backend).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402

SEED = 1337


def pytest_configure(config):
    # Also declared in pyproject.toml; repeated so `pytest -p no:...` or a
    # run from another rootdir still knows the marker under --strict-markers.
    config.addinivalue_line("markers", "slow: real-data end-to-end runs")


def pytest_report_header(config):
    return f"keras {keras.__version__}, backend: {keras.backend.backend()}"


@pytest.fixture(autouse=True)
def _seeded_isolated_keras():
    """Each test starts from the same seeds and a fresh Keras graph/name
    state, so results do not depend on which tests ran before. (No
    `gc.collect()`: with TensorFlow loaded it costs seconds per test.)"""
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(SEED)
