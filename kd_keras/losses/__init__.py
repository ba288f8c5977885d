"""Distillation terms, each a serializable layer (see `base.DistillationLoss`).

`get` turns a name or a config into a term, so a YAML file can say
`loss: dkd` or `loss: {dkd: {temperature: 2}}`; `get_terms` turns a YAML list
of them into the terms of a `Distiller`.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Sequence

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
    hint = difflib.get_close_matches(key, [*LOSSES, *by_class], n=1)
    hint = hint and (LOSSES.get(hint[0]) and hint[0] or by_class[hint[0]].__name__)
    raise ValueError(
        f"Unknown distillation loss {name!r}"
        + (f"; did you mean {hint!r}?" if hint else ".")
        + f" Known names: {sorted(LOSSES)} (class names such as 'SoftTargetKD' work too)."
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


def get_terms(
    identifiers: Sequence[str | dict | DistillationLoss], temperature: float | None = None
) -> list[DistillationLoss]:
    """The terms of a YAML list such as `[soft_target, {dkd: {beta: 2}}]`.

    Each entry is what `get` accepts. `temperature`, when given, is the
    temperature of every term that takes one (`SoftTargetKD`, `DKD`) and was
    not given its own, so a pipeline's `distill.temperature` keeps its meaning
    when the terms are listed. An argument a term does not take is named
    with the arguments it does take.

    Example:

    ```python
    terms = kd_keras.losses.get_terms(["soft_target", {"dkd": {"beta": 2}}], temperature=2.0)
    [float(t.temperature.numpy()) for t in terms]  # [2.0, 2.0]
    ```
    """
    if isinstance(identifiers, (str, dict, DistillationLoss)):
        identifiers = [identifiers]
    terms = []
    for identifier in identifiers:
        name, arguments = _name_and_arguments(identifier)
        if name is None:
            terms.append(get(identifier))
            continue
        cls = _lookup(name)
        if temperature is not None and issubclass(cls, TemperatureMixin):
            arguments = {"temperature": temperature, **arguments}
        # The class's own arguments and those it hands to DistillationLoss.
        accepted = list(
            dict.fromkeys(
                p
                for klass in cls.__mro__
                if issubclass(klass, DistillationLoss)
                for p in inspect.signature(klass.__init__).parameters
                if p not in ("self", "args", "kwargs")
            )
        )
        unknown = [a for a in arguments if a not in accepted]
        if unknown:
            hint = difflib.get_close_matches(str(unknown[0]), accepted, n=1)
            raise ValueError(
                f"{cls.__name__} takes no argument {unknown[0]!r}"
                + (f"; did you mean {hint[0]!r}?" if hint else ".")
                + f" Its arguments: {', '.join(accepted)}."
            )
        terms.append(cls(**arguments))
    return terms


def _name_and_arguments(identifier) -> tuple[str | None, dict]:
    """`("dkd", {"beta": 2})` for `"dkd"` or `{"dkd": {"beta": 2}}`; `(None,
    {})` for anything else (a term, a Keras config) that `get` reads as is."""
    if isinstance(identifier, str):
        return identifier, {}
    if isinstance(identifier, dict) and len(identifier) == 1 and "class_name" not in identifier:
        (name, arguments), = identifier.items()
        if arguments is None or isinstance(arguments, dict):
            return str(name), dict(arguments or {})
    return None, {}


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
    "get_terms",
    "serialize",
    "weighted_mean",
]
