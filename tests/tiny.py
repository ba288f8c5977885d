"""Tiny models and data shared by the unit tests (fast on 2 cores)."""

from __future__ import annotations

import keras
import numpy as np

NUM_CLASSES = 4


def mlp(units=16, classes=NUM_CLASSES, features=6, name="mlp", activation=None, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((features,), name="x")
    h = keras.layers.Dense(units, activation="relu", name="hidden")(inputs)
    out = keras.layers.Dense(classes, activation=activation, name="logits")(h)
    return keras.Model(inputs, out, name=name)


def conv(filters=4, classes=NUM_CLASSES, name="conv", seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="block1")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    out = keras.layers.Dense(classes, name="logits")(h)
    return keras.Model(inputs, out, name=name)


def data(n=64, features=6, classes=NUM_CLASSES, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (np.abs(x[:, 0] * 3).astype("int64") % classes).astype("int32")
    return x, y


def images(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1)).astype("float32"), rng.integers(0, NUM_CLASSES, n).astype(
        "int32"
    )


def softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def np_soft_target(t_logits, s_logits, temperature, weights=None):
    """Hinton 2015, written from the formula: T² · KL(p_t || p_s) per sample."""
    p_t = softmax(t_logits / temperature)
    p_s = softmax(s_logits / temperature)
    per = (p_t * (np.log(p_t) - np.log(p_s))).sum(-1) * temperature**2
    if weights is None:
        return per.mean()
    weights = np.broadcast_to(weights, per.shape)
    return (per * weights).sum() / weights.sum()


def np_sparse_ce(labels, logits):
    p = softmax(logits)
    return -np.log(np.take_along_axis(p, labels[..., None].astype(int), -1)[..., 0])


def digits_student(x_train, y_train, epochs: int, batch_size: int):
    """The reference digits student (`cnn_student((8, 8, 1))`), seeded and
    trained with labels: the model the export and bench tests convert."""
    from kd_keras.models import cnn_student

    keras.utils.set_random_seed(0)
    model = cnn_student((8, 8, 1))
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=0)
    return model
