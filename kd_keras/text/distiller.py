"""`TextDistiller`: the name `kd_keras.Distiller` had for keras-hub models."""

from __future__ import annotations

import keras

from kd_keras.distiller import Distiller


@keras.saving.register_keras_serializable(package="kd_keras")
class TextDistiller(Distiller):
    """`kd_keras.Distiller` under its former name for keras-hub models.

    Deprecated: use `kd_keras.Distiller`, which takes dict inputs of token
    ids, attaches terms with an `attach(teacher, student)` method (the
    TinyBERT terms of `kd_keras.text.losses`) and keeps a shared tokenizer
    shared (`shared_tokenizer`). The class adds nothing to it; it stays
    registered so code and saved `.keras` files that name it keep working.

    Example:

    ```python
    # Not run: loads the MiniLM checkpoint.
    teacher = kd_keras.text.load_teacher(kd_keras.text.minilm_path(), num_classes=5)
    student = kd_keras.text.build_student(teacher, num_layers=2, hidden_dim=128)
    terms = kd_keras.text.tinybert_losses(teacher, student)
    distiller = kd_keras.Distiller(student, teacher, losses=terms, alpha=0.0)
    ```
    """
