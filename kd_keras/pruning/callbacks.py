"""Callbacks for pruning: `UpdatePruningStep` (required) and `PruningSummaries`."""

from __future__ import annotations

import os

import keras
import numpy as np
from keras import ops

from kd_keras.pruning import tfmot_bridge
from kd_keras.pruning.wrapper import collect_pruned_layers


def remask_weights(model) -> None:
    """Write `weight * mask` back into every pruned weight of `model`.

    The forward pass already uses `weight * mask`; this makes the stored
    variables exactly sparse too (optimizer momentum can move a masked
    entry between two epochs, with no effect on the outputs).
    """
    for layer in collect_pruned_layers(model):
        for weight, masked in zip(layer.pruned_weights, layer.masked_weights()):
            weight.assign(masked)


class _TfKerasHooks:
    """Lets tf_keras's `fit` (TFMOT bridge) take these Keras 3 callbacks: its
    CallbackList asks each callback which batch hooks it implements."""

    def _implements_train_batch_hooks(self):
        return False

    def _implements_test_batch_hooks(self):
        return False

    def _implements_predict_batch_hooks(self):
        return False


class UpdatePruningStep(_TfKerasHooks, keras.callbacks.Callback):
    """Starts the pruning step counters and re-masks the weights each epoch.

    Required by `fit` on a model with `PruneLowMagnitude` layers (also inside
    `kd_keras.Distiller.fit`, where it finds the student's layers). The step
    itself is counted inside the compiled train step; this callback moves a
    fresh counter from -1 to 0 (a model restored mid-pruning keeps its step)
    and, at each epoch end, writes `weight * mask` into the weights.

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    model = keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(3, name="logits"),
    ])

    model = kd_keras.pruning.prune_low_magnitude(model)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, callbacks=[kd_keras.pruning.UpdatePruningStep()], verbose=0)
    ```
    """

    def __init__(self):
        super().__init__()
        self.prunable_layers = []
        self._tfmot_callback = None

    def on_train_begin(self, logs=None):
        if tfmot_bridge.is_tf_keras(self.model):
            # A tf_keras model pruned by TFMOT: its own callback does the work.
            self._tfmot_callback = tfmot_bridge.update_pruning_step_callback()
            self._tfmot_callback.set_model(self.model)
            self._tfmot_callback.on_train_begin(logs)
            return
        self.prunable_layers = collect_pruned_layers(self.model)
        for layer in self.prunable_layers:
            layer._step_callback_active = True
            # A fresh counter starts at 0; a restored model keeps its step. (A
            # layer built later, in the first traced step, starts from -1, which
            # the wrapper counts as 0.)
            if layer.built and int(ops.convert_to_numpy(layer.pruning_step.value)) == -1:
                layer.pruning_step.assign(0)

    def _steps(self) -> list[int]:
        return [
            int(ops.convert_to_numpy(layer.pruning_step.value)) if layer.built else -1
            for layer in self.prunable_layers
        ]

    def on_epoch_begin(self, epoch, logs=None):
        if self._tfmot_callback is None:
            self._epoch_start_steps = self._steps()

    def on_epoch_end(self, epoch=None, logs=None, batch=None):
        # `batch`: TFMOT's documented custom training loop calls
        # `on_epoch_end(batch=-1)` (its callback names the argument so).
        if self._tfmot_callback is not None:
            self._tfmot_callback.on_epoch_end(epoch if batch is None else batch, logs)
            return
        # A custom loop may call on_epoch_end without on_epoch_begin: then
        # there is no step count to check against, only the re-masking to do.
        start_steps = getattr(self, "_epoch_start_steps", None) or [None] * len(
            self.prunable_layers
        )
        idle = [
            layer.name
            for layer, before, after in zip(self.prunable_layers, start_steps, self._steps())
            if before == after
        ]
        self._epoch_start_steps = None
        if idle:
            # Keras calls a model whose call() has no `training` argument in
            # inference mode: nothing would ever be pruned.
            raise RuntimeError(
                f"Pruned layers {idle} were never called with training=True during "
                "this epoch, so they were not pruned. If the model is subclassed, give "
                "its call() a `training=None` argument and pass it to its layers."
            )
        remask_weights(self.model)

    def on_train_end(self, logs=None):
        if self._tfmot_callback is not None:
            self._tfmot_callback = None
            return
        remask_weights(self.model)
        for layer in self.prunable_layers:
            layer._step_callback_active = False


class PruningSummaries(_TfKerasHooks, keras.callbacks.Callback):
    """Writes pruning scalars to TensorBoard under `log_dir/metrics`.

    For each pruned weight: `<layer>/<weight>_mask/sparsity` (fraction of
    zeros in the mask) and `<layer>/<weight>_threshold/threshold`; plus the
    schedule's target `<layer>/target_sparsity`. The step axis is the
    optimizer's iteration count.

    Args:
        log_dir: directory for the event files (TensorBoard's `--logdir`).
        update_freq: "epoch", or an integer N to also write every N batches.

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    model = kd_keras.pruning.prune_low_magnitude(student)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, callbacks=[UpdatePruningStep(), PruningSummaries("logs/pruning")], verbose=0)
    ```
    """

    def __init__(self, log_dir: str, update_freq: str | int = "epoch"):
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)) or not str(log_dir):
            raise ValueError(f"log_dir must be a non-empty path, got {log_dir!r}.")
        if update_freq != "epoch" and not (isinstance(update_freq, int) and update_freq > 0):
            raise ValueError(f"update_freq must be 'epoch' or a positive int, got {update_freq!r}.")
        self.log_dir = os.fspath(log_dir)
        self.update_freq = update_freq
        self._writer = None
        self._last_written = None

    def _file_writer(self):
        if self._writer is None:
            try:
                import tensorflow as tf
            except ImportError as e:  # TensorBoard files are written with tf.summary.
                raise ImportError(
                    "PruningSummaries needs TensorFlow installed to write TensorBoard event files."
                ) from e
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "metrics"))
        return self._writer

    def pruning_logs(self) -> dict[str, float]:
        """The scalars written, as a dict (name -> value)."""
        logs = {}
        for layer in collect_pruned_layers(self.model):
            if not layer.built:  # built in the first training step
                continue
            for mask, threshold in zip(layer.masks, layer.thresholds):
                mask_value = ops.convert_to_numpy(mask.value)
                logs[f"{layer.name}/{mask.name}/sparsity"] = float(1.0 - np.mean(mask_value))
                logs[f"{layer.name}/{threshold.name}/threshold"] = float(
                    ops.convert_to_numpy(threshold.value)
                )
            step = ops.convert_to_tensor(
                max(int(ops.convert_to_numpy(layer.pruning_step.value)), 0)
            )
            logs[f"{layer.name}/target_sparsity"] = float(
                ops.convert_to_numpy(layer.pruning_schedule(step)[1])
            )
        return logs

    def _write(self):
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        # What tf.summary.scalar writes, without needing the tensorboard package.
        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
            data_class=summary_pb2.DATA_CLASS_SCALAR,
        )
        optimizer = getattr(self.model, "optimizer", None)
        iteration = int(ops.convert_to_numpy(optimizer.iterations)) if optimizer else 0
        if iteration == self._last_written:
            return
        self._last_written = iteration
        with self._file_writer().as_default():
            for name, value in self.pruning_logs().items():
                tf.summary.write(
                    name, tf.constant(value, tf.float32), step=iteration, metadata=metadata
                )
        self._writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        if self.update_freq != "epoch" and (batch + 1) % self.update_freq == 0:
            self._write()

    def on_epoch_begin(self, epoch, logs=None):
        # As TFMOT, which writes at each epoch's start (custom training loops
        # call only on_epoch_begin); a step already written is not repeated.
        self._write()

    def on_epoch_end(self, epoch, logs=None):
        self._write()

    def _implements_train_batch_hooks(self):
        return self.update_freq != "epoch"

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
