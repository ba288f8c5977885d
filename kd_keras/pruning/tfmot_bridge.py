"""TFMOT bridge: tf_keras (Keras 2) models are pruned by real
`tensorflow_model_optimization` underneath, with a warning that says so.

`kd_keras.pruning.prune_low_magnitude`, `strip_pruning`, `UpdatePruningStep`
and `sparsity_report` route tf_keras objects here, so one script serves both
Keras generations; kd_keras schedules are converted to TFMOT's.
"""

from __future__ import annotations

import logging
import warnings
from typing import Iterable, Sequence

from kd_keras.pruning.schedules import ConstantSparsity, PolynomialDecay

logger = logging.getLogger("kd_keras.pruning")


class TFMOTBridgeWarning(UserWarning):
    """Emitted when a tf_keras model is handed to TFMOT instead of kd_keras."""


def is_tf_keras(obj) -> bool:
    """True for tf_keras (Keras 2) layers and models, or lists of them."""
    if isinstance(obj, (list, tuple)):
        return bool(obj) and all(is_tf_keras(o) for o in obj)
    return any(
        cls.__module__.split(".")[0] == "tf_keras" or cls.__module__.startswith("keras.src.engine")
        for cls in type(obj).__mro__
    )


def _tfmot():
    try:
        import tensorflow_model_optimization as tfmot
    except ImportError as e:
        raise ImportError(
            "This is a tf_keras (Keras 2) model: kd_keras prunes it with "
            "tensorflow-model-optimization, which is not installed. "
            "`pip install tensorflow-model-optimization`, or build the model with Keras 3."
        ) from e
    return tfmot


def _announce(what: str) -> None:
    message = (
        f"kd_keras.pruning: {what} is a tf_keras (Keras 2) object; using "
        "tensorflow_model_optimization (TFMOT) underneath."
    )
    logger.warning(message)
    warnings.warn(message, TFMOTBridgeWarning, stacklevel=4)


def to_tfmot_schedule(schedule):
    """The TFMOT schedule with the same parameters as a kd_keras one."""
    sparsity = _tfmot().sparsity.keras
    if schedule is None:
        return sparsity.ConstantSparsity(0.5, 0)
    if isinstance(schedule, (ConstantSparsity, PolynomialDecay)):
        return getattr(sparsity, type(schedule).__name__)(**schedule.get_config())
    if isinstance(schedule, sparsity.PruningSchedule):
        return schedule
    raise ValueError(
        f"{type(schedule).__name__} has no TFMOT equivalent; with a tf_keras model use "
        "ConstantSparsity, PolynomialDecay or a tfmot.sparsity.keras.PruningSchedule."
    )


def _selected(layer, entries) -> bool:
    return any(
        (isinstance(e, str) and layer.name == e)
        or (isinstance(e, type) and isinstance(layer, e))
        or e is layer
        for e in entries
    )


def prune_low_magnitude(
    to_prune,
    pruning_schedule=None,
    block_size: Sequence[int] = (1, 1),
    block_pooling_type: str = "AVG",
    sparsity_m_by_n: Sequence[int] | None = None,
    prunable: Iterable | None = None,
    skip: Iterable | None = None,
):
    """`tfmot.sparsity.keras.prune_low_magnitude` on a tf_keras layer or model.

    With `prunable` / `skip`, the model is cloned and only the selected layers
    wrapped (TFMOT's documented `clone_model` recipe); an explicitly listed
    layer TFMOT cannot prune is an error here, not later.

    Example:

    ```python
    import tf_keras
    model = tf_keras.Sequential([tf_keras.layers.Dense(4, input_shape=(8,))])
    pruned = kd_keras.pruning.prune_low_magnitude(model)  # warns: uses TFMOT
    ```
    """
    tfmot = _tfmot()
    _announce(f"'{getattr(to_prune, 'name', type(to_prune).__name__)}'")
    params = {
        "pruning_schedule": to_tfmot_schedule(pruning_schedule),
        "block_size": tuple(block_size),
        "block_pooling_type": block_pooling_type,
        "sparsity_m_by_n": sparsity_m_by_n,
    }
    prune = tfmot.sparsity.keras.prune_low_magnitude
    if prunable is None and skip is None:
        return prune(to_prune, **params)

    import tf_keras
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import (
        PruneRegistry,
    )

    def supported(layer):  # has weights TFMOT would prune
        if hasattr(layer, "get_prunable_weights"):
            return True
        weights = PruneRegistry._LAYERS_WEIGHTS_MAP.get(layer.__class__, True)  # RNNs: True
        return PruneRegistry.supports(layer) and bool(weights)

    prunable, skip = list(prunable) if prunable is not None else None, list(skip or [])
    for layer in to_prune.layers:
        if prunable is not None and _selected(layer, prunable) and not supported(layer):
            raise ValueError(
                f"TFMOT has no weights to prune in layer '{layer.name}' "
                f"({type(layer).__name__}); remove it from `prunable`."
            )

    def wrap(layer):
        chosen = supported(layer) if prunable is None else _selected(layer, prunable)
        if chosen and not _selected(layer, skip):
            return prune(layer, **params)
        return layer

    return tf_keras.models.clone_model(to_prune, clone_function=wrap)


def strip_pruning(model):
    """`tfmot.sparsity.keras.strip_pruning` on a tf_keras model."""
    _announce(f"'{model.name}'")
    return _tfmot().sparsity.keras.strip_pruning(model)


def update_pruning_step_callback():
    """TFMOT's own `UpdatePruningStep`, which `UpdatePruningStep` delegates to."""
    return _tfmot().sparsity.keras.UpdatePruningStep()
