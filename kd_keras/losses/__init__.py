"""Distillation terms, each a serializable layer (see `base.DistillationLoss`).

`get` turns a name or a config into a term, so a YAML file can say
`loss: dkd` or `loss: {dkd: {temperature: 2}}`.
"""

from __future__ import annotations

from typing import Any

import keras

from kd_keras.losses.attention_transfer import AttentionTransfer
from kd_keras.losses.base import DistillationLoss, weighted_mean
from kd_keras.losses.dkd import DKD
from kd_keras.losses.hint import HintLoss
from kd_keras.losses.logits_mse import LogitsMSE
from kd_keras.losses.rkd import RKD
from kd_keras.losses.soft_target import SoftTargetKD, TemperatureMixin

#: Short names a config may use, e.g. `loss: soft_target`.
LOSSES: dict[str, type[DistillationLoss]] = {
    "soft_target": SoftTargetKD,
    "logits_mse": LogitsMSE,
    "hint": HintLoss,
    "attention_transfer": AttentionTransfer,
    "dkd": DKD,
    "rkd": RKD,
}


def _lookup(name: str) -> type[DistillationLoss]:
    key = name.strip().lower().replace("-", "_")
    if key.startswith("kd_keras>"):
        key = key[len("kd_keras>") :]
    by_class = {cls.__name__.lower(): cls for cls in LOSSES.values()}
    if key in LOSSES:
        return LOSSES[key]
    if key in by_class:
        return by_class[key]
    raise ValueError(
        f"Unknown distillation loss {name!r}. Known names: {sorted(LOSSES)} "
        "(class names such as 'SoftTargetKD' work too)."
    )


def get(identifier: str | dict | DistillationLoss) -> DistillationLoss:
    """A distillation term from a name, a config or a term.

    Accepts a short name (`"dkd"`, case-insensitive, or a class name), a
    one-entry mapping of a name to its arguments (`{"dkd": {"beta": 4}}`),
    a Keras config (`{"class_name": "DKD", "config": {...}}`, as written by
    `serialize`), or a `DistillationLoss`, returned as is.

    Example:

    ```python
    kd_keras.losses.get("soft_target")
    kd_keras.losses.get({"hint": {"teacher_layer": "block2", "student_layer": "block2"}})
    ```
    """
    if isinstance(identifier, DistillationLoss):
        return identifier
    if isinstance(identifier, str):
        return _lookup(identifier)()
    if isinstance(identifier, dict):
        if "class_name" in identifier:
            cls = _lookup(identifier["class_name"])
            config = {
                **identifier,
                "class_name": cls.__name__,
                "config": identifier.get("config") or {},
            }
            return keras.saving.deserialize_keras_object(
                config, custom_objects={cls.__name__: cls}
            )
        if len(identifier) == 1:
            (name, arguments), = identifier.items()
            if arguments is None or isinstance(arguments, dict):
                return _lookup(name)(**(arguments or {}))
    raise ValueError(
        f"Cannot make a distillation loss from {identifier!r}: give a name "
        f"from {sorted(LOSSES)}, a mapping such as {{'dkd': {{'beta': 4.0}}}}, "
        "or a config written by kd_keras.losses.serialize."
    )


def serialize(loss: DistillationLoss) -> dict[str, Any]:
    """The Keras config of a term; `get` / `deserialize` read it back."""
    return keras.saving.serialize_keras_object(loss)


def deserialize(config: dict[str, Any]) -> DistillationLoss:
    """Inverse of `serialize` (builds the term too when the config says how)."""
    return keras.saving.deserialize_keras_object(config)


__all__ = [
    "AttentionTransfer",
    "DKD",
    "DistillationLoss",
    "HintLoss",
    "LOSSES",
    "LogitsMSE",
    "RKD",
    "SoftTargetKD",
    "TemperatureMixin",
    "deserialize",
    "get",
    "serialize",
    "weighted_mean",
]
