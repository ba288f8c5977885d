"""Reference teacher and student CNNs used by the demo, examples, tests and
benchmarks, so every figure in `benchmarks/RESULTS.md` names the same models.

Layers have stable names (`block1`, `block2`, `embedding`, `logits`) so hint
and attention-transfer terms can point at them. The last layer has no softmax:
kd_keras distils logits.
"""

from __future__ import annotations

from typing import Sequence

import keras
from keras import layers


def _conv_blocks(x, filters: Sequence[int]):
    """conv3x3 (no bias) - BN - ReLU (`block{i}`) - 2x2 max-pool, per width."""
    for i, f in enumerate(filters, start=1):
        x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"block{i}")(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)
    return x


def cnn_teacher(
    input_shape: Sequence[int] = (28, 28, 1),
    num_classes: int = 10,
    filters: Sequence[int] = (32, 64),
    dense_units: int = 384,
    dropout: float = 0.3,
    name: str = "teacher",
) -> keras.Model:
    """A VGG-style CNN: conv-BN-ReLU-pool blocks, a wide dense layer, logits.

    With the defaults on 28x28x1 it has about 1.25 M parameters.
    """
    inputs = keras.Input(tuple(input_shape), name="image")
    x = _conv_blocks(inputs, filters)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units, activation="relu", name="embedding")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def cnn_student(
    input_shape: Sequence[int] = (28, 28, 1),
    num_classes: int = 10,
    filters: Sequence[int] = (8, 16),
    name: str = "student",
) -> keras.Model:
    """A small CNN: two conv-BN-ReLU-pool blocks and a linear classifier.

    With the defaults on 28x28x1 it has about 9.2 k parameters.
    """
    inputs = keras.Input(tuple(input_shape), name="image")
    x = _conv_blocks(inputs, filters)
    x = layers.Flatten(name="embedding")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
