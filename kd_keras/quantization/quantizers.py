"""Fake-quantization building blocks for int8 quantization-aware training.

Both quantizers call `kd_keras.quantization.fake_quantize.fake_quant`, which on
the TensorFlow backend lowers to `FakeQuantWithMinMaxVars(PerChannel)`: the
ops the TFLite converter reads to turn a graph into real int8 kernels. On JAX
and torch it runs the same formula written in `keras.ops` (per-channel along
any axis, straight-through gradient), so QAT trains identically on every
backend.

The scheme is TFLite's int8 spec (and TFMOT's `Default8BitQuantizeScheme`):

* weights: symmetric per output channel, narrow range `[-127, 127]`, zero
  point 0, range taken from the current weights at every call (TFMOT's
  `LastValueQuantizer`). Symmetric int8 maps 0.0 to exactly 0.0, so a pruned
  (zero) weight stays zero.
* activations: asymmetric per tensor, `[-128, 127]`, with a moving-average
  range held in non-trainable variables that are updated in training only,
  like `BatchNormalization`'s moving statistics (so JAX's stateless `fit`
  carries them too). The range starts at TFMOT's `[-6, 6]`; the first
  training batch replaces it, later batches move it with `ema_decay`.

A quantizer follows TFMOT's `Quantizer` contract: `build(shape, name, layer)`
creates its variables on the host layer (so they are saved with it) and
returns them; `__call__(x, training, weights)` returns the fake-quantized `x`.
"""

from __future__ import annotations

import keras
from keras import ops

from kd_keras.quantization.fake_quantize import fake_quant


def _check_num_bits(num_bits):
    if not isinstance(num_bits, int) or not 2 <= num_bits <= 8:
        raise ValueError(
            f"num_bits must be an int in [2, 8] (TFLite runs int8 kernels), "
            f"got {num_bits!r}."
        )


@keras.saving.register_keras_serializable(package="kd_keras")
class Quantizer:
    """Base class: a serializable fake-quantization rule for one tensor."""

    def build(self, tensor_shape, name: str, layer: keras.layers.Layer) -> dict:
        """Create the variables this quantizer needs on `layer`."""
        return {}

    def __call__(self, inputs, training=False, weights=None):
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()


@keras.saving.register_keras_serializable(package="kd_keras")
class PerChannelSymmetricQuantizer(Quantizer):
    """Symmetric int8 weight quantizer, one scale per channel along `axis`.

    The range of channel `c` is `[-max|w_c|, max|w_c|]` with the narrow range
    `[-127, 127]` (TFLite's int8 weight spec: zero point 0). A channel that is
    entirely zero (a pruned filter) gets the range `[-1, 1]` so its scale is
    finite and its zeros stay zeros.

    Args:
        num_bits: bit width, 8 for int8.
        axis: the channel axis of the weight, `-1` for `Conv*D` kernels,
            `-2` for `DepthwiseConv2D` kernels; `None` for one scale over the
            whole tensor (what `quantize_model` uses for `Dense`, as TFMOT
            does: the converter transposes a `Dense` kernel into TFLite's
            `FULLY_CONNECTED` layout, which it cannot do for per-channel
            scales).

    Example:

    ```python
    layer = keras.layers.Dense(4)
    layer.build((None, 8))
    q = PerChannelSymmetricQuantizer(axis=-1)
    kernel_q = q(layer.kernel)  # same shape, 255 levels per output channel
    ```
    """

    def __init__(self, num_bits: int = 8, axis: int | None = -1):
        _check_num_bits(num_bits)
        self.num_bits = num_bits
        self.axis = None if axis is None else int(axis)

    def ranges(self, inputs):
        """The per-channel `(min, max)` that `__call__` quantizes with."""
        ndim = len(inputs.shape)
        if self.axis is None:
            reduce_axes = None
        else:
            reduce_axes = tuple(i for i in range(ndim) if i != self.axis % ndim)
        max_abs = ops.max(ops.abs(inputs), axis=reduce_axes)
        max_abs = ops.where(max_abs > 0, max_abs, ops.ones_like(max_abs))
        return -max_abs, max_abs

    def __call__(self, inputs, training=False, weights=None):
        min_vals, max_vals = self.ranges(inputs)
        return fake_quant(
            inputs,
            min_vals,
            max_vals,
            num_bits=self.num_bits,
            narrow_range=True,
            axis=None if self.axis is None else self.axis % len(inputs.shape),
        )

    def get_config(self):
        return {"num_bits": self.num_bits, "axis": self.axis}


@keras.saving.register_keras_serializable(package="kd_keras")
class MovingAverageQuantizer(Quantizer):
    """Asymmetric per-tensor activation quantizer with a moving-average range.

    In training the batch's `[min(x, 0), max(x, 0)]` updates two non-trainable
    variables (the first batch sets them, later ones move them by
    `ema_decay`), and `x` is quantized with the updated range. In inference
    the stored range is used unchanged, which is what the TFLite converter
    reads as the tensor's int8 scale and zero point.

    Args:
        num_bits: bit width, 8 for int8.
        ema_decay: weight of the old range in the moving average.

    Example:

    ```python
    class QuantizedReLU(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.quantizer = MovingAverageQuantizer(num_bits=8, ema_decay=0.9)

        def build(self, input_shape):
            # The range variables belong to the layer that owns the quantizer.
            self.range = self.quantizer.build(input_shape, "act", self)

        def call(self, x, training=False):
            x = keras.ops.relu(x)
            return self.quantizer(x, training=training, weights=self.range)

    layer = QuantizedReLU()
    x = np.linspace(-1.0, 3.0, 16).reshape(1, 16).astype("float32")
    y = layer(x, training=True)  # the first batch sets the range to [0, 3]
    assert np.allclose(layer.range["max"].numpy(), 3.0)
    steps = np.asarray(y) / (3.0 / 255)  # on the 8-bit grid of [0, 3]
    assert np.allclose(steps, np.round(steps), atol=1e-3)
    ```
    """

    def __init__(self, num_bits: int = 8, ema_decay: float = 0.999):
        _check_num_bits(num_bits)
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}.")
        self.num_bits = num_bits
        self.ema_decay = float(ema_decay)

    def build(self, tensor_shape, name, layer):
        def variable(suffix, value):
            return layer.add_weight(
                name=f"{name}_{suffix}",
                shape=(),
                initializer=keras.initializers.Constant(value),
                trainable=False,
                autocast=False,
            )

        # TFMOT's starting range, so an untrained model still runs.
        return {
            "min": variable("min", -6.0),
            "max": variable("max", 6.0),
            "initialized": variable("initialized", 0.0),
        }

    def __call__(self, inputs, training=False, weights=None):
        min_var, max_var = weights["min"], weights["max"]
        if training:
            x = ops.stop_gradient(ops.cast(inputs, "float32"))
            batch_min = ops.minimum(ops.min(x), 0.0)
            batch_max = ops.maximum(ops.max(x), 0.0)
            seen = ops.cast(weights["initialized"], "float32")
            # Before the first update the stored range is meaningless (zeros).
            decay = self.ema_decay * seen
            new_min = decay * min_var + (1.0 - decay) * batch_min
            new_max = decay * max_var + (1.0 - decay) * batch_max
            # An all-zero tensor (a dead ReLU) still needs a non-empty range.
            new_max = ops.maximum(new_max, new_min + 1e-6)
            min_var.assign(new_min)
            max_var.assign(new_max)
            weights["initialized"].assign(ops.ones_like(seen))
            min_vals, max_vals = new_min, new_max
        else:
            min_vals, max_vals = ops.convert_to_tensor(min_var), ops.convert_to_tensor(max_var)
        return fake_quant(inputs, min_vals, max_vals, num_bits=self.num_bits)

    def get_config(self):
        return {"num_bits": self.num_bits, "ema_decay": self.ema_decay}


def deserialize_quantizer(config):
    """A quantizer from `keras.saving.serialize_keras_object` output, or `None`."""
    if config is None or isinstance(config, Quantizer):
        return config
    return keras.saving.deserialize_keras_object(config)
