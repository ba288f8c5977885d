"""`FilterPruneLowMagnitude`: masks whole output channels of a layer during
training, by a pruning schedule, so filters can be removed gradually in one
`fit` (and physically, afterwards, by `strip_filters`).

It wraps the three kinds of layer that carry a channel: a Conv/Dense (the
*producer* of the channel), a BatchNormalization and a depthwise
convolution (its *followers*, whose bias / beta would otherwise turn a
removed channel back into a constant). The wrapper multiplies the layer's
output by a per-channel mask: masked filters get no gradient and emit
exactly zero, which is what removing them computes.

A coupled group (e.g. every output of a residual stage) must lose the same
channels in all its layers. No layer writes another's variables: every
wrapper of a group scores the channels the same way, from the same
variables (`peers`), at the same step, so all members compute the same
mask inside the compiled step, on every backend. The score of a channel is
that of the one-shot `prune_filters`, times the current mask:

- `"l1"` / `"l2"`: the sum over the group's producers (Conv/Dense kernels)
  of each filter's L1 / L2 norm;
- `"bn_gamma"`: the sum of |gamma| over the group's BatchNormalization
  layers (their gammas are the peers); a group with none scores by `"l1"`.

`"taylor"` is not offered here: it needs the gradient of the loss with
respect to each channel, which a layer does not see inside the training
step (the one-shot `prune_filters(..., importance="taylor", data=...)`
computes it). Masked channels score zero and stay masked as the sparsity
rises (as TFMOT's masks). The number kept is TFMOT's
`max(round(n * (1 - sparsity)), 1)`, rounded up to a multiple of
`round_to`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
from keras import layers, ops

from kd_keras.pruning import impl
from kd_keras.pruning.dependency import FilterPruningError
from kd_keras.pruning.filters import check_round_to
from kd_keras.pruning.schedules import PruningSchedule, as_pruning_schedule

# The importances a layer can compute from its group's weights during training.
GRADUAL_IMPORTANCES = ("l1", "l2", "bn_gamma")

_UNLINKED = (
    "Layer '{name}' has no peer kernels to score its filters with: wrappers made by "
    "kd_keras.pruning.prune_filters_low_magnitude are linked to their group's layers; "
    "after loading a .keras file call kd_keras.pruning.link_filter_peers(model) once."
)


def channel_count(layer) -> int:
    """Number of channels a producer / follower layer carries."""
    if isinstance(layer, layers.Dense):
        return int(layer.units)
    if isinstance(layer, (layers.Conv1D, layers.Conv2D, layers.Conv3D)):
        return int(layer.filters)
    if isinstance(layer, layers.BatchNormalization):
        return int(layer.gamma.shape[0] if layer.scale else layer.beta.shape[0])
    if isinstance(layer, (layers.DepthwiseConv1D, layers.DepthwiseConv2D)):
        return int(layer.kernel.shape[-2])
    raise ValueError(
        f"FilterPruneLowMagnitude wraps Conv/Dense, BatchNormalization or DepthwiseConv "
        f"layers, got '{layer.name}' ({type(layer).__name__})."
    )


def check_gradual_importance(importance) -> None:
    """Refuse an importance gradual filter pruning cannot compute, saying why."""
    if importance == "taylor":
        raise FilterPruningError(
            'importance="taylor" needs the gradient of the loss with respect to each '
            "channel, which a layer does not see inside the training step, so gradual "
            "filter pruning cannot follow it. Use the one-shot "
            'kd_keras.pruning.prune_filters(model, fraction, importance="taylor", data=(x, y)) '
            f"and fine-tune, or one of {GRADUAL_IMPORTANCES} here."
        )
    if importance not in GRADUAL_IMPORTANCES:
        raise FilterPruningError(
            f"importance must be one of {GRADUAL_IMPORTANCES} for gradual filter pruning, "
            f"got {importance!r}."
        )


@keras.saving.register_keras_serializable(package="kd_keras")
class FilterPruneLowMagnitude(layers.Wrapper):
    """Gradual filter pruning of a layer's output channels.

    Args:
        layer: a Conv/Dense, BatchNormalization or DepthwiseConv layer.
        pruning_schedule: a `PruningSchedule`; its sparsity is the share of the
            group's channels masked. Default `ConstantSparsity(0.5, 0)`.
        peers: names of the layers of the channel group whose variables
            score the channels: the group's producers (Conv/Dense kernels)
            or, for `"bn_gamma"`, its BatchNormalization layers (gammas).
        fixed: channel indices never masked (model outputs, skipped layers).
        importance: `"l1"`, `"l2"` or `"bn_gamma"` (see the module docstring).
        round_to: the kept channel count is rounded up to a multiple of this.

    Prefer `kd_keras.pruning.prune_filters_low_magnitude(model, schedule)`,
    which finds the groups, wraps every member and links the peers.

    Example:

    ```python
    x = np.random.rand(32, 8, 8, 1).astype("float32")
    y = np.random.randint(0, 3, size=32)
    student = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv1"),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv2"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3),
    ])

    pruned = kd_keras.pruning.prune_filters_low_magnitude(
        student, kd_keras.pruning.PolynomialDecay(0.0, 0.5, 0, 1000, frequency=50))
    ```
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        pruning_schedule: PruningSchedule | dict | None = None,
        peers: Sequence[str] = (),
        fixed: Sequence[int] = (),
        importance: str = "l1",
        round_to: int = 1,
        **kwargs,
    ):
        check_gradual_importance(importance)
        check_round_to(round_to)
        pruning_schedule = as_pruning_schedule(pruning_schedule)
        kwargs.setdefault("name", f"filter_prune_low_magnitude_{layer.name}")
        super().__init__(layer, **kwargs)
        self.pruning_schedule = pruning_schedule
        self.peers = [str(p) for p in peers]
        self.fixed = sorted(int(i) for i in fixed)
        self.importance = importance
        self.round_to = int(round_to)
        # A callable, not a list: Keras would track a list of variables as this
        # layer's own weights (and save them twice).
        self._peer_kernels: Callable[[], list] | None = None

    def link(self, peer_kernels: Callable[[], list]) -> None:
        """Give the wrapper a function returning its peers' variables (the
        kernels of Conv/Dense peers, the gammas of BatchNormalization ones)."""
        self._peer_kernels = peer_kernels

    def build(self, input_shape=None):
        super().build(input_shape)
        channels = channel_count(self.layer)
        self.channel_mask = self.add_weight(
            name="channel_mask",
            shape=(channels,),
            initializer="ones",
            trainable=False,
            dtype="float32",
        )
        self.pruning_step = self.add_weight(
            name="pruning_step", shape=(), initializer="zeros", trainable=False, dtype="int32"
        )
        self.built = True

    def _scores(self, mask):
        channels = mask.shape[0]
        score = ops.zeros((channels,), "float32")
        for variable in self._peer_kernels():
            value = ops.cast(variable.value, "float32")
            if len(value.shape) == 1:  # a BatchNormalization gamma
                score = score + ops.abs(value)
                continue
            flat = ops.reshape(value, (-1, channels))
            if self.importance == "l2":
                score = score + ops.sqrt(ops.sum(ops.square(flat), axis=0))
            else:  # "l1", and "bn_gamma" for a group with no BatchNormalization
                score = score + ops.sum(ops.abs(flat), axis=0)
        score = ops.stop_gradient(score * mask)
        if self.fixed:
            keep = ops.scatter([[i] for i in self.fixed], ops.ones((len(self.fixed),)), (channels,))
            # Fixed channels outrank every other one, so they are never masked.
            score = ops.where(keep > 0, ops.max(score) + 1.0, score)
        return score

    def call(self, inputs, training=None, **kwargs):
        mask = self.channel_mask.value
        if training:
            if self._peer_kernels is None:
                raise RuntimeError(_UNLINKED.format(name=self.name))
            step = ops.add(self.pruning_step.value, 1)
            self.pruning_step.assign(step)
            should, sparsity = self.pruning_schedule(step)
            mask = ops.cond(
                should,
                lambda: impl.magnitude_mask(self._scores(mask), sparsity, self.round_to)[0],
                lambda: mask,
            )
            self.channel_mask.assign(mask)
        if getattr(self.layer, "_call_has_training_arg", False):
            kwargs["training"] = training
        outputs = self.layer(inputs, **kwargs)
        return outputs * ops.cast(mask, outputs.dtype)

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "pruning_schedule": keras.saving.serialize_keras_object(self.pruning_schedule),
                "peers": self.peers,
                "fixed": self.fixed,
                "importance": self.importance,
                "round_to": self.round_to,
            }
        )
        return config
