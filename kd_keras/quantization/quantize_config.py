"""`QuantizeConfig`: how to quantize a layer `quantize_model` has no rule for.

TFMOT's extension point for custom layers, under TFMOT's names, for Keras 3.
A config says which of a layer's weights are fake-quantized with which
`Quantizer`, which of its activation functions get their output quantized,
and which quantizers run on the layer's outputs. `quantize_model` wraps the
layer in a `QuantizeWrapper` that consults the config instead of its built-in
rule; `quantize_scope` makes the user's classes loadable from `.keras`.

Example:

```python
from kd_keras.quantization import (
    MovingAverageQuantizer, PerChannelSymmetricQuantizer, QuantizeConfig,
    quantize_annotate_layer, quantize_model, quantize_scope,
)

class ScaledDenseConfig(QuantizeConfig):
    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, PerChannelSymmetricQuantizer(axis=None))]
    def get_activations_and_quantizers(self, layer):
        return []
    def set_quantize_weights(self, layer, quantize_weights):
        layer.kernel = quantize_weights[0]
    def set_quantize_activations(self, layer, quantize_activations):
        pass
    def get_output_quantizers(self, layer):
        return [MovingAverageQuantizer()]
    def get_config(self):
        return {}

x = quantize_annotate_layer(ScaledDense(16), ScaledDenseConfig())(inputs)
qat = quantize_model(keras.Model(inputs, keras.layers.Dense(10)(x)))
with quantize_scope(ScaledDense, ScaledDenseConfig):
    restored = keras.models.load_model("qat.keras")
```
"""

from __future__ import annotations

import abc
import contextlib
from typing import Iterator

import keras


class QuantizeConfig(abc.ABC):
    """How to quantize one layer (TFMOT's `QuantizeConfig` contract).

    During every call of the wrapped layer, the wrapper fake-quantizes the
    weights named by `get_weights_and_quantizers` and hands them to
    `set_quantize_weights`, wraps the activations named by
    `get_activations_and_quantizers` so their outputs are quantized and hands
    them to `set_quantize_activations`, runs the layer, puts the original
    weights and activations back the same way, and quantizes the layer's
    outputs with `get_output_quantizers`.

    Subclasses implement the six methods below; a config with arguments also
    needs `from_config` when they are not `__init__`'s keywords (the default
    is `cls(**config)`).

    Example:

    ```python
    class DenseKernelConfig(QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            return [(layer.kernel, PerChannelSymmetricQuantizer(axis=None))]
        def get_activations_and_quantizers(self, layer):
            return [(layer.activation, MovingAverageQuantizer())]
        def set_quantize_weights(self, layer, quantize_weights):
            layer.kernel = quantize_weights[0]
        def set_quantize_activations(self, layer, quantize_activations):
            layer.activation = quantize_activations[0]
        def get_output_quantizers(self, layer):
            return []
        def get_config(self):
            return {}
    ```
    """

    @abc.abstractmethod
    def get_weights_and_quantizers(self, layer) -> list:
        """`[(variable of layer, Quantizer), ...]` for the weights to quantize."""

    @abc.abstractmethod
    def get_activations_and_quantizers(self, layer) -> list:
        """`[(activation callable of layer, Quantizer), ...]`."""

    @abc.abstractmethod
    def set_quantize_weights(self, layer, quantize_weights: list) -> None:
        """Put `quantize_weights` (same order as above) where `layer.call` reads them."""

    @abc.abstractmethod
    def set_quantize_activations(self, layer, quantize_activations: list) -> None:
        """Put `quantize_activations` (same order) where `layer.call` uses them."""

    @abc.abstractmethod
    def get_output_quantizers(self, layer) -> list:
        """Quantizers for the layer's outputs, one per output (or `[]`)."""

    @abc.abstractmethod
    def get_config(self) -> dict:
        """The keyword arguments that rebuild this config."""

    @classmethod
    def from_config(cls, config: dict) -> QuantizeConfig:
        return cls(**config)


def checked_weights_and_quantizers(config: QuantizeConfig, layer) -> list:
    """`config.get_weights_and_quantizers(layer)`, refused with the layer named
    when it returns something that is not one of `layer`'s own variables."""
    where = f"{type(config).__name__}.get_weights_and_quantizers for layer {layer.name!r} " \
        f"({type(layer).__name__})"
    try:
        pairs = list(config.get_weights_and_quantizers(layer))
    except AttributeError as error:
        raise ValueError(
            f"{where} failed: {error}. Return only variables the layer creates in build "
            f"(its weights are {[w.path for w in layer.weights]})."
        ) from None
    own = {id(w) for w in layer.weights}
    for pair in pairs:
        weight = pair[0] if isinstance(pair, (tuple, list)) and len(pair) == 2 else None
        if weight is None or id(weight) not in own:
            what = getattr(weight, "path", None) or type(pair).__name__
            raise ValueError(
                f"{where} returned {what!r}, which is not a (variable of the layer, "
                f"Quantizer) pair. The layer's weights are {[w.path for w in layer.weights]}."
            )
    return pairs


def _as_custom_objects(items) -> dict:
    objects = {}
    for item in items:
        if isinstance(item, dict):
            objects.update(item)
        elif isinstance(item, type) or callable(item):
            objects[item.__name__] = item
        else:
            raise TypeError(
                f"quantize_scope takes classes or dicts of {{name: class}}, got {item!r}."
            )
    return objects


@contextlib.contextmanager
def quantize_scope(*custom_objects) -> Iterator[None]:
    """Make kd_keras's quantization classes and the given user classes
    (custom layers, `QuantizeConfig`s, quantizers) deserializable.

    Args:
        *custom_objects: classes, or dicts `{name: class}` as TFMOT takes.

    Example:

    ```python
    class ScaledDense(keras.layers.Dense):  # a user's layer
        def call(self, x):
            return 2.0 * super().call(x)

    class ScaledDenseConfig(QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            return [(layer.kernel, PerChannelSymmetricQuantizer(axis=None))]
        def get_activations_and_quantizers(self, layer):
            return []
        def set_quantize_weights(self, layer, quantize_weights):
            layer.kernel = quantize_weights[0]
        def set_quantize_activations(self, layer, quantize_activations):
            pass
        def get_output_quantizers(self, layer):
            return [MovingAverageQuantizer()]
        def get_config(self):
            return {}

    inputs = keras.Input((8,))
    x = quantize_annotate_layer(ScaledDense(16), ScaledDenseConfig())(inputs)
    qat = quantize_model(keras.Model(inputs, keras.layers.Dense(4)(x)))
    qat.save("qat.keras")

    with quantize_scope(ScaledDense, ScaledDenseConfig):
        qat = keras.models.load_model("qat.keras")
    ```
    """
    with keras.saving.custom_object_scope(_as_custom_objects(custom_objects)):
        yield
