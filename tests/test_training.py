"""`kd_keras.pipeline.training.train`: distilling from cached teacher logits
is the same training as distilling from the live teacher."""

from __future__ import annotations

import keras
import numpy as np

import kd_keras
from kd_keras.pipeline.training import train


def dense(units, seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(units)])


def test_cached_teacher_logits_train_like_the_live_teacher():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 6)).astype("float32")
    y = rng.integers(0, 3, size=48)
    teacher = dense(3, seed=1)
    live, cached = dense(3, seed=2), dense(3, seed=2)
    kwargs = {
        "epochs": 3, "batch_size": 16, "temperature": 4.0, "alpha": 0.3, "seed": 5, "verbose": 0
    }

    train(live, x, y, teacher=teacher, **kwargs)
    logits = kd_keras.cache_teacher_outputs(teacher, x, verbose=0)
    np.testing.assert_allclose(logits, teacher.predict(x, verbose=0), atol=1e-6)
    history = train(cached, x, y, teacher=teacher, teacher_logits=logits, **kwargs)

    assert {"student_loss", "soft_target_loss"} <= set(history.history)
    for a, b in zip(live.get_weights(), cached.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # The student did move: the comparison is not between two untouched models.
    assert not np.allclose(live.get_weights()[0], dense(3, seed=2).get_weights()[0])
    # And the cached logits are what the steps read: other logits, other student.
    other = dense(3, seed=2)
    train(other, x, y, teacher=teacher, teacher_logits=-logits, **kwargs)
    assert not np.allclose(other.get_weights()[0], cached.get_weights()[0], atol=1e-3)
