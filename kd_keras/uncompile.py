"""`uncompile`: a model as if `compile()` had never been called on it.

Keras has no public way to forget a `compile()`, and `keras.models.clone_model`
compiles its clone like the original (a fresh optimizer, built, and the
original's loss and metrics). A model handed back by a strip step
(`strip_pruning`, `strip_clustering`) would then save that optimizer's slots
with it: for a 9 k-parameter student, Adam's two slots per weight made the
saved `.keras` half again as large as the dense student's, as if pruning had
grown the model. A stripped model is a result to save, export or compile
again, so the strip steps return it uncompiled.
"""

from __future__ import annotations

import keras


def uncompile(model: keras.Model) -> keras.Model:
    """Forget `model`'s `compile()` (optimizer, loss, metrics) in place.

    The model's weights and graph are untouched. Afterwards `model.compiled`
    is False, `model.optimizer` is None, `model.save` writes no compile
    config and no optimizer variables (the same file as a model never
    compiled), and `fit` / `evaluate` ask for `compile()` again. `predict`
    works as before.

    Args:
        model: a Keras 3 model, compiled or not.

    Returns:
        `model` itself.

    Example:

    ```python
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("adam", "mse")
    uncompile(model).compiled  # False
    ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"uncompile takes a keras.Model, got {type(model).__name__}.")
    # These are the attributes `Trainer.__init__` starts every model with;
    # `compile()` sets them, and the `.keras` writer saves whatever they
    # hold (the optimizer's variables, the loss and metric trackers).
    model.compiled = False
    model.optimizer = None
    model.loss = None
    model._compile_loss = None
    model._compile_metrics = None
    model._loss_tracker = None
    return model
