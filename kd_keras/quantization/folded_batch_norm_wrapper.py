"""`FoldedBatchNormWrapper`: a kernel layer with the BatchNormalization after it
folded in, that trains with batch statistics like the float model.

Folding a BN into the kernel once, with its moving statistics, makes QAT
train a network whose BNs never see a batch: when the moving statistics lag
behind the weights (a briefly trained model, a BN momentum of 0.999) the
QAT model starts far from the float one and can collapse. This layer is the
standard remedy (Jacob et al. 2018, sec. 3.2; Krishnamoorthi 2018;
TensorFlow's former `contrib.quantize` with `freeze_bn_delay`). With `w` the
float kernel, `b` its bias, `gamma` / `beta` the BN's scale and offset,
`mu` / `sigma = sqrt(moving_variance + epsilon)` the moving statistics and
`mu_B` / `sigma_B` those of the current batch of `conv(x, w) + b`:

* training, before `freeze_bn_delay` steps:
  `conv(x, Q(w * gamma / sigma)) * sigma / sigma_B + beta + gamma * (b - mu_B) / sigma_B`,
  which is `BatchNormalization(training=True)(conv(x, w) + b)` up to the
  weight quantization `Q`, and the moving statistics are updated from the
  batch exactly as the BN does (its momentum); the kernel is quantized on
  the grid of the inference fold, so the int8 weights do not jump when the
  statistics freeze;
* training after `freeze_bn_delay` steps, and inference:
  `conv(x, Q(w * gamma / sigma)) + beta + gamma * (b - mu) / sigma`, the
  inference fold that TFLite runs; the moving statistics stay frozen.
"""

from __future__ import annotations

import keras
from keras import ops

from kd_keras.quantization import _kernels
from kd_keras.quantization.quantize_wrapper import QuantizeWrapper


@keras.saving.register_keras_serializable(package="kd_keras")
class FoldedBatchNormWrapper(QuantizeWrapper):
    """Runs `layer` followed by `batch_norm` as one fake-quantized layer whose
    BN uses batch statistics in training (see the module docstring).

    Args:
        layer: the float kernel layer (`Dense`, `Conv*D`, `DepthwiseConv2D`),
            with its own kernel and bias, and the activation fused after the
            BN (`linear`, `relu` or `relu6`).
        batch_norm: the channels-last `BatchNormalization` that follows it;
            its variables (gamma, beta, moving statistics), momentum and
            epsilon are the ones trained and used.
        freeze_bn_delay: training steps (calls with `training=True`) after
            which the moving statistics are used and frozen; `None` never
            freezes.
        weight_quantizer, output_quantizer, preserve_sparsity: as for
            `QuantizeWrapper`; the weight quantizer sees the folded kernel.

    Example:

    ```python
    x = np.random.rand(4, 8, 8, 3).astype("float32")
    wrapper = FoldedBatchNormWrapper(
        keras.layers.Conv2D(8, 3, use_bias=False, activation="relu"),
        keras.layers.BatchNormalization(),
        weight_quantizer=PerChannelSymmetricQuantizer(axis=-1),
        output_quantizer=MovingAverageQuantizer(),
        freeze_bn_delay=1000,
    )
    y = wrapper(x, training=True)  # == relu(BN(conv(x), training=True)), weights in int8
    ```
    """

    def __init__(
        self,
        layer,
        batch_norm,
        weight_quantizer=None,
        output_quantizer=None,
        preserve_sparsity: bool = False,
        freeze_bn_delay: int | None = None,
        **kwargs,
    ):
        if kwargs.get("quantize_config") is not None:
            raise ValueError(
                f"FoldedBatchNormWrapper: layer {layer.name!r} folds a BatchNormalization; "
                f"it takes no quantize_config."
            )
        super().__init__(
            layer,
            weight_quantizer=weight_quantizer,
            output_quantizer=output_quantizer,
            preserve_sparsity=preserve_sparsity,
            **kwargs,
        )
        if isinstance(batch_norm, dict):
            batch_norm = keras.saving.deserialize_keras_object(batch_norm)
        if type(batch_norm) is not keras.layers.BatchNormalization:
            raise TypeError(
                f"FoldedBatchNormWrapper: batch_norm for layer {layer.name!r} must be a "
                f"keras.layers.BatchNormalization, got {type(batch_norm).__name__}."
            )
        if not _kernels.is_kernel_layer(layer) or _kernels.kernel_layer_problem(layer):
            raise ValueError(
                f"FoldedBatchNormWrapper: {layer.name!r} ({type(layer).__name__}) is not a "
                f"kernel layer a BatchNormalization can be folded into."
            )
        if getattr(batch_norm, "renorm", False):
            raise ValueError(
                f"FoldedBatchNormWrapper: the BatchNormalization {batch_norm.name!r} uses "
                f"renorm, whose corrections are not folded; fold it with its moving "
                f"statistics (quantize_model(..., freeze_bn_delay=0))."
            )
        self.batch_norm = batch_norm
        self.freeze_bn_delay = check_freeze_bn_delay(freeze_bn_delay)

    def build(self, input_shape):
        super().build(input_shape)
        output_shape = self.layer.compute_output_shape(input_shape)
        if not self.batch_norm.built:
            self.batch_norm.build(output_shape)
        # Counts training calls, the clock of `freeze_bn_delay`; int32 so it
        # stays exact (float32 would stop counting at 2**24).
        self.bn_step = self.add_weight(
            name="bn_step", shape=(), dtype="int32", initializer="zeros", trainable=False
        )
        self._reduction_axes = list(range(len(output_shape) - 1))

    def _scale_shape(self):
        return (-1, 1) if _kernels.channel_axis(self.layer) == -2 else (-1,)

    def _statistics(self):
        """`gamma`, `beta`, `moving_mean`, `moving_variance` as tensors (ones /
        zeros for a BN without scale / center)."""
        bn = self.batch_norm
        gamma = ops.convert_to_tensor(bn.gamma) if bn.scale else 1.0
        beta = ops.convert_to_tensor(bn.beta) if bn.center else 0.0
        return (
            gamma,
            beta,
            ops.convert_to_tensor(bn.moving_mean),
            ops.convert_to_tensor(bn.moving_variance),
        )

    def _bias(self):
        return ops.convert_to_tensor(self.layer.bias) if self.layer.use_bias else 0.0

    def _float_kernel(self):
        kernel = self.layer.kernel
        if self.preserve_sparsity:
            kernel = ops.multiply(kernel, ops.cast(self.sparsity_mask, kernel.dtype))
        return kernel

    def quantized_kernel(self, training=False):
        """The folded kernel `w * gamma / sigma` as the int8 model stores it."""
        gamma, _, _, moving_variance = self._statistics()
        scale = gamma * ops.rsqrt(moving_variance + self.batch_norm.epsilon)
        kernel = ops.multiply(self._float_kernel(), ops.reshape(scale, self._scale_shape()))
        if self.weight_quantizer is None:
            return kernel
        # In the shape TFLite's op reads (a Conv1D's as CONV_2D's), as
        # QuantizeWrapper does, so the per-channel axis survives conversion.
        return self.weight_quantizer(_kernels.op_kernel(self.layer, kernel), training=training)

    def folded_bias(self):
        """`beta + gamma * (b - mu) / sigma`: the bias of the inference fold."""
        gamma, beta, moving_mean, moving_variance = self._statistics()
        inv_sigma = ops.rsqrt(moving_variance + self.batch_norm.epsilon)
        return beta + gamma * (self._bias() - moving_mean) * inv_sigma

    def call(self, inputs, training=None):
        training = bool(training)
        outputs = _kernels.kernel_call(
            self.layer, inputs, self.quantized_kernel(training), bias=False
        )
        # As in BatchNormalization: batch statistics only when training a
        # trainable BN.
        if training and self.batch_norm.trainable:
            outputs = self._with_batch_statistics(inputs, outputs)
        else:
            outputs = ops.add(outputs, self.folded_bias())
        if self._pre_activation_vars is not None:
            outputs = self._pre_activation_quantizer(
                outputs, training=training, weights=self._pre_activation_vars
            )
        outputs = self.layer.activation(outputs)
        if self.output_quantizer is not None:
            outputs = self.output_quantizer(outputs, training=training, weights=self._output_vars)
        return outputs

    def _with_batch_statistics(self, inputs, conv):
        """`conv` (computed with the quantized inference kernel) normalized
        with the batch statistics until the freeze, with the moving ones
        after; the BN's moving statistics updated as Keras does."""
        bn = self.batch_norm
        gamma, beta, moving_mean, moving_variance = self._statistics()
        # The statistics of the float layer's output, as the float BN sees
        # them; gradients flow through them as through the BN's own.
        float_outputs = _kernels.kernel_call(self.layer, inputs, self._float_kernel())
        batch_mean, batch_variance = ops.moments(
            float_outputs, axes=self._reduction_axes, synchronized=bn.synchronized
        )
        step = ops.convert_to_tensor(self.bn_step)
        if self.freeze_bn_delay is None:
            frozen = ops.convert_to_tensor(False)
        else:
            frozen = ops.greater_equal(step, self.freeze_bn_delay)
        inv_sigma_batch = ops.rsqrt(batch_variance + bn.epsilon)
        # sigma / sigma_B undoes the moving-statistics scale of the kernel;
        # once frozen, both factors are the inference fold's, exactly.
        correction = ops.where(
            frozen, 1.0, ops.sqrt(moving_variance + bn.epsilon) * inv_sigma_batch
        )
        bias = ops.where(
            frozen,
            self.folded_bias(),
            beta + gamma * (self._bias() - batch_mean) * inv_sigma_batch,
        )
        outputs = ops.add(ops.multiply(conv, correction), bias)
        momentum = bn.momentum
        batch_mean = ops.stop_gradient(batch_mean)
        batch_variance = ops.stop_gradient(batch_variance)
        bn.moving_mean.assign(
            ops.where(frozen, moving_mean, moving_mean * momentum + batch_mean * (1.0 - momentum))
        )
        bn.moving_variance.assign(
            ops.where(
                frozen,
                moving_variance,
                moving_variance * momentum + batch_variance * (1.0 - momentum),
            )
        )
        self.bn_step.assign(ops.add(step, 1))
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            batch_norm=keras.saving.serialize_keras_object(self.batch_norm),
            freeze_bn_delay=self.freeze_bn_delay,
        )
        return config


def check_freeze_bn_delay(freeze_bn_delay) -> int | None:
    """`freeze_bn_delay` validated: `None` or an int >= 0."""
    if freeze_bn_delay is None:
        return None
    if isinstance(freeze_bn_delay, bool) or not isinstance(freeze_bn_delay, int) \
            or freeze_bn_delay < 0:
        raise ValueError(
            f"freeze_bn_delay must be a number of training steps >= 0 (0 folds the "
            f"BatchNormalization with its moving statistics from the start) or None "
            f"(never freeze), got {freeze_bn_delay!r}."
        )
    return int(freeze_bn_delay)
