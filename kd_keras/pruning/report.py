"""`sparsity_report(model)`: zeros and parameters per layer and in total."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from keras import ops

from kd_keras.pruning.tfmot_bridge import is_tf_keras
from kd_keras.pruning.wrapper import PruneLowMagnitude


@dataclass
class LayerSparsity:
    """One row: a layer's parameter count and exact zeros (pruned: wrapped for pruning)."""

    name: str
    type: str
    params: int
    zeros: int
    pruned: bool = False

    @property
    def sparsity(self) -> float:
        return self.zeros / self.params if self.params else 0.0


@dataclass
class SparsityReport:
    """Per-layer and total sparsity. `str(report)` is a table.

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    model = kd_keras.pruning.prune_low_magnitude(student)
    report = kd_keras.pruning.sparsity_report(model)
    print(report)
    report.sparsity, report.pruned_sparsity
    ```
    """

    layers: list[LayerSparsity] = field(default_factory=list)

    @property
    def total_params(self) -> int:
        return sum(row.params for row in self.layers)

    @property
    def total_zeros(self) -> int:
        return sum(row.zeros for row in self.layers)

    @property
    def sparsity(self) -> float:
        """Zero fraction over all parameters (biases, normalization included)."""
        return self.total_zeros / self.total_params if self.total_params else 0.0

    @property
    def pruned_sparsity(self) -> float:
        """Zero fraction over the layers wrapped for pruning only."""
        params = sum(row.params for row in self.layers if row.pruned)
        zeros = sum(row.zeros for row in self.layers if row.pruned)
        return zeros / params if params else 0.0

    def as_dict(self) -> dict:
        return {
            "layers": [asdict(row) | {"sparsity": row.sparsity} for row in self.layers],
            "total_params": self.total_params,
            "total_zeros": self.total_zeros,
            "sparsity": self.sparsity,
            "pruned_sparsity": self.pruned_sparsity,
        }

    def table(self) -> str:
        header = ("layer", "type", "params", "zeros", "sparsity")
        rows = [
            (
                r.name + (" *" if r.pruned else ""),
                r.type,
                str(r.params),
                str(r.zeros),
                f"{r.sparsity:.2%}",
            )
            for r in self.layers
        ]
        rows.append(
            ("total", "", str(self.total_params), str(self.total_zeros), f"{self.sparsity:.2%}")
        )
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

        def line(row):
            return "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths))
            )

        rule = "-" * len(line(header))
        footer = "(* = pruned layer)" if any(r.pruned for r in self.layers) else ""
        return "\n".join(
            [line(header), rule, *map(line, rows[:-1]), rule, line(rows[-1]), footer]
        ).rstrip()

    def __str__(self) -> str:
        return self.table()


def _own_variables(layer) -> list:
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def _layer_rows(model):
    """(name, type, arrays, pruned) for each layer owning parameters."""
    if is_tf_keras(model):
        yield from _tf_keras_rows(model)
        return
    layers = list(model._flatten_layers(include_self=True, recursive=True))
    # A wrapped layer is one row with all its weights, its sub-layers' too
    # (MultiHeadAttention's projections, an LSTM's cell).
    inner = {
        id(sub)
        for layer in layers
        if isinstance(layer, PruneLowMagnitude)
        for sub in layer.layer._flatten_layers(include_self=True, recursive=True)
    }
    for layer in layers:
        if id(layer) in inner:
            continue
        if isinstance(layer, PruneLowMagnitude):
            masked = {id(w): m for w, m in zip(layer.pruned_weights, layer.masked_weights())}
            arrays = [masked.get(id(v), v.value) for v in layer.layer.weights]
            yield layer.layer.name, type(layer.layer).__name__, arrays, True
        else:
            arrays = [v.value for v in _own_variables(layer)]
            if arrays:
                yield layer.name, type(layer).__name__, arrays, False


def _tf_keras_rows(model):
    layers = list(model._flatten_layers(include_self=False, recursive=True))
    wrappers = {
        id(layer): layer for layer in layers if type(layer).__name__ == "PruneLowMagnitude"
    }  # TFMOT's wrapper
    inner = {id(layer.layer) for layer in wrappers.values()}
    for layer in layers:
        if id(layer) in wrappers:  # count weight * mask
            masked = {id(w): (w * m).numpy() for w, m, _ in layer.pruning_vars}
            arrays = [masked.get(id(w), w.numpy()) for w in layer.layer.weights]
            yield layer.layer.name, type(layer.layer).__name__, arrays, True
        elif id(layer) in inner or list(layer._flatten_layers(include_self=False)):
            continue  # counted by its wrapper, or a container of counted layers
        elif layer.weights:
            yield layer.name, type(layer).__name__, [w.numpy() for w in layer.weights], False


def sparsity_report(model) -> SparsityReport:
    """Count exact zeros per layer of `model` (pruned, stripped, or plain).

    For pruned layers the counted values are `weight * mask`, what the layer
    computes with. Works on Keras 3 models and on tf_keras models pruned by
    TFMOT.

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    pruned_model = kd_keras.pruning.prune_low_magnitude(student)
    print(kd_keras.pruning.sparsity_report(pruned_model))
    ```
    """
    report = SparsityReport()
    for name, type_name, arrays, pruned in _layer_rows(model):
        values = [np.asarray(ops.convert_to_numpy(a)) for a in arrays]
        report.layers.append(
            LayerSparsity(
                name=name,
                type=type_name,
                params=int(sum(v.size for v in values)),
                zeros=int(sum(np.count_nonzero(v == 0) for v in values)),
                pruned=pruned,
            )
        )
    return report
