"""Magnitude pruning of a trained student while it fine-tunes: unstructured
(a sparsity ramp, then recovery), m-by-n structured, or whole filters.

Example:

```python
from kd_keras.pipeline.prune_step import prune_student

pruned, stripped, history = prune_student(student, x, y, final_sparsity=0.8, epochs=2)
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kd_keras import pruning
from kd_keras.pipeline.data_sources import sample_count
from kd_keras.pipeline.training import train
from kd_keras.pruning.wrapper import is_prunable, prunable_weights, reduced_axes


def parse_m_by_n(value) -> tuple[int, int]:
    """`"2:4"`, `[2, 4]` or `(2, 4)` -> `(2, 4)`: m zeros in every n weights."""
    parts = value.split(":") if isinstance(value, str) else value
    try:
        m, n = (int(p) for p in parts)
    except (TypeError, ValueError):
        m, n = 0, 0
    if not 1 <= m < n:
        raise ValueError(
            f"m_by_n must be 'M:N' with 1 <= M < N (M zeros in every N weights), "
            f"e.g. '2:4'; got {value!r}."
        )
    return m, n


def _m_by_n_layers(model, n: int) -> tuple[list[str], list[str]]:
    """(layers whose input axis splits into groups of n, prunable layers whose
    does not): the second are left dense rather than failing the run."""
    fits, left = [], []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not is_prunable(layer) or not layer.built:
            continue
        # Each weight along its own axis: a composite layer's kernels differ
        # (an EinsumDense projection, a Dense feed-forward).
        pairs = [
            (w, axis)
            for w, axis in zip(prunable_weights(layer), reduced_axes(layer))
            if axis is not None
        ]
        ok = bool(pairs) and all(w.shape[axis] % n == 0 for w, axis in pairs)
        (fits if ok else left).append(layer.name)
    return fits, left


#: Learning-rate schedules `prune_student` knows.
LR_SCHEDULES = ("hold-cosine", "constant")


def prune_student(
    student,
    x: np.ndarray,
    y: np.ndarray,
    *,
    final_sparsity: float | None = None,
    m_by_n=None,
    filters: float | None = None,
    epochs: int = 2,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    ramp: float = 0.5,
    lr_schedule: str = "hold-cosine",
    callbacks: Sequence[Any] = (),
    log=None,
    **train_kwargs: Any,
):
    """Magnitude-prunes `student` while fine-tuning it (on labels, or
    distilling from `teacher=`; `train_kwargs` as for `train`); returns
    `(pruned, stripped, history)`.

    `final_sparsity` ramps up with `PolynomialDecay` over the first `ramp`
    of the steps (`pruning.ramp_schedule`) and is then held while the network
    recovers; with `lr_schedule="hold-cosine"` the learning rate is held
    during the ramp and cosine-decayed to 1 % after it
    (`pruning.recovery_learning_rate`), `"constant"` keeps it. `m_by_n` (`(2, 4)` or
    `"2:4"`) sets structured m-zeros-in-n masks on every layer whose input
    dimension is a multiple of n (others stay dense and are named in `log`).
    `pruned` still has its `PruneLowMagnitude` wrappers (for
    `sparsity_report`), `stripped` is the plain model to save.
    `filters` (e.g. 0.5) removes that share of the filters at once
    (`pruning.prune_filters`, a physically smaller model) and then fine-tunes
    it; `pruned` and `stripped` are then the same model.
    """
    if sum(v is not None for v in (final_sparsity, m_by_n, filters)) != 1:
        raise ValueError(
            "Give exactly one of final_sparsity (e.g. 0.8), m_by_n (e.g. '2:4') or "
            "filters (e.g. 0.5)."
        )
    if filters is not None:
        smaller = pruning.prune_filters(student, filters)
        if log is not None:
            log(
                f"filters {filters}: {student.count_params()} -> {smaller.count_params()} "
                "parameters"
            )
        history = train(
            smaller,
            x,
            y,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            callbacks=list(callbacks),
            **train_kwargs,
        )
        return smaller, smaller, history
    if m_by_n is not None:
        m_by_n = parse_m_by_n(m_by_n)
        fits, left = _m_by_n_layers(student, m_by_n[1])
        if not fits:
            raise ValueError(
                f"m_by_n={m_by_n[0]}:{m_by_n[1]}: no layer of {student.name!r} has an input "
                f"dimension divisible by {m_by_n[1]} ({left}); use final_sparsity instead."
            )
        if left and log is not None:
            log(
                f"m_by_n {m_by_n[0]}:{m_by_n[1]}: keeping {left} dense (input size not a "
                f"multiple of {m_by_n[1]})"
            )
        pruned = pruning.prune_low_magnitude(student, sparsity_m_by_n=m_by_n, prunable=fits)
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}.")
    steps = epochs * int(np.ceil(sample_count(x) / batch_size))
    # m-by-n masks are fixed from the start: the whole run is recovery.
    hold = 0
    if final_sparsity is not None:
        schedule = pruning.ramp_schedule(final_sparsity, steps, ramp=ramp)
        pruned = pruning.prune_low_magnitude(student, pruning_schedule=schedule)
        hold = schedule.end_step
    if lr_schedule == "hold-cosine":
        learning_rate = pruning.recovery_learning_rate(learning_rate, hold, steps)
    history = train(
        pruned,
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        callbacks=[pruning.UpdatePruningStep(), *callbacks],
        **train_kwargs,
    )
    return pruned, pruning.strip_pruning(pruned), history
