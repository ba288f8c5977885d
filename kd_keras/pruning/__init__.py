"""Magnitude pruning for Keras 3 with TFMOT's API, on every backend.

Names follow `tfmot.sparsity.keras`: `prune_low_magnitude`, `strip_pruning`,
`ConstantSparsity`, `PolynomialDecay`, `UpdatePruningStep`, `PruningSummaries`.
tf_keras (Keras 2) models are handed to TFMOT itself (see `tfmot_bridge`).
Filter (channel) pruning, which makes a model physically smaller and faster:
`prune_filters` (one shot), `prune_filters_low_magnitude` + `strip_filters`
(gradual, in one `fit`).

Example:

```python
from kd_keras import pruning

pruned = pruning.prune_low_magnitude(
    model, pruning_schedule=pruning.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=1000)
)
pruned.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
pruned.fit(x, y, epochs=3, callbacks=[pruning.UpdatePruningStep()])
print(pruning.sparsity_report(pruned))
final = pruning.strip_pruning(pruned)
```
"""

import keras

from kd_keras.pruning.callbacks import PruningSummaries, UpdatePruningStep
from kd_keras.pruning.dependency import ChannelGraph, FilterPruningError
from kd_keras.pruning.filter_wrapper import FilterPruneLowMagnitude
from kd_keras.pruning.filters import prune_filters
from kd_keras.pruning.gradual_filters import (
    link_filter_peers,
    prune_filters_low_magnitude,
    strip_filters,
)
from kd_keras.pruning.impl import block_mask, m_by_n_mask, magnitude_mask
from kd_keras.pruning.prunable_layer import PrunableLayer
from kd_keras.pruning.prune import PrunedCoverageWarning, prune_low_magnitude, strip_pruning
from kd_keras.pruning.report import LayerSparsity, SparsityReport, sparsity_report
from kd_keras.pruning.schedules import (
    ConstantSparsity,
    PolynomialDecay,
    PruningSchedule,
    ramp_schedule,
    recovery_learning_rate,
)
from kd_keras.pruning.tfmot_bridge import TFMOTBridgeWarning
from kd_keras.pruning.wrapper import PRUNABLE_LAYER_TYPES, PruneLowMagnitude


def prune_scope():
    """TFMOT compatibility: kd_keras pruning objects are registered Keras
    serializables, so `.keras` files load without this scope."""
    return keras.saving.custom_object_scope(
        {
            "PruneLowMagnitude": PruneLowMagnitude,
            "ConstantSparsity": ConstantSparsity,
            "PolynomialDecay": PolynomialDecay,
        }
    )


__all__ = [
    "PRUNABLE_LAYER_TYPES",
    "ChannelGraph",
    "FilterPruneLowMagnitude",
    "FilterPruningError",
    "ConstantSparsity",
    "LayerSparsity",
    "PolynomialDecay",
    "PrunableLayer",
    "PrunedCoverageWarning",
    "PruneLowMagnitude",
    "PruningSchedule",
    "PruningSummaries",
    "SparsityReport",
    "TFMOTBridgeWarning",
    "UpdatePruningStep",
    "block_mask",
    "m_by_n_mask",
    "link_filter_peers",
    "magnitude_mask",
    "prune_filters",
    "prune_filters_low_magnitude",
    "prune_low_magnitude",
    "prune_scope",
    "ramp_schedule",
    "recovery_learning_rate",
    "sparsity_report",
    "strip_filters",
    "strip_pruning",
]
