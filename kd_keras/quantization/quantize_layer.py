"""`QuantizeLayer`: where a float tensor enters the quantized part of a model."""

from __future__ import annotations

import keras

from kd_keras.quantization.quantizers import MovingAverageQuantizer, deserialize_quantizer


@keras.saving.register_keras_serializable(package="kd_keras")
class QuantizeLayer(keras.layers.Layer):
    """Fake-quantizes a float tensor entering the quantized part of a model.

    In the `.tflite` this is where the float input becomes int8 (or where an
    int8 input is consumed directly with `int8_io=True`).

    Example:

    ```python
    inputs = keras.Input((8, 8, 1))
    x = QuantizeLayer(name="quantize_image")(inputs)
    ```
    """

    def __init__(self, quantizer=None, **kwargs):
        super().__init__(**kwargs)
        self.quantizer = deserialize_quantizer(quantizer) or MovingAverageQuantizer()
        self.supports_masking = True

    def build(self, input_shape):
        self._quantizer_vars = self.quantizer.build(input_shape, "range", self)

    def call(self, inputs, training=None):
        return self.quantizer(inputs, training=bool(training), weights=self._quantizer_vars)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["quantizer"] = keras.saving.serialize_keras_object(self.quantizer)
        return config
