"""`TextDistiller`: the `Distiller` for keras-hub text models."""

from __future__ import annotations

import keras

from kd_keras.distiller import Distiller


@keras.saving.register_keras_serializable(package="kd_keras")
class TextDistiller(Distiller):
    """`kd_keras.Distiller` for keras-hub models, with two additions:

    - keras-hub tasks take a dict of inputs (`token_ids`, `segment_ids`,
      `padding_mask`) while `model.inputs` is a flat list, so the shape
      probe uses the model's own input structure;
    - terms with an `attach` method (the TinyBERT terms of
      `kd_keras.text.losses`) are attached to the teacher and student here,
      also when a saved `TextDistiller` is loaded back.

    Example:

    ```python
    distiller = TextDistiller(student, teacher, losses=tinybert_losses(teacher, student), alpha=0.0)
    distiller.compile(optimizer="adam")
    distiller.fit(teacher.preprocessor(texts), labels, epochs=3)
    ```
    """

    def __init__(self, student, teacher=None, losses=None, **kwargs):
        super().__init__(student=student, teacher=teacher, losses=losses, **kwargs)
        attachable = [t for t in self.distillation_terms if hasattr(t, "attach")]
        if attachable and len(self.teachers) != 1:
            raise ValueError(
                "Attention and hidden-state terms compare one teacher with the "
                f"student; got {len(self.teachers)} teachers."
            )
        for term in attachable:
            if not term.__dict__.get("_captures"):
                term.attach(self.teachers[0], self.student)

    def _build_terms(self, inputs):
        struct = getattr(self.student, "_inputs_struct", None)
        if isinstance(struct, dict):
            inputs = struct
        super()._build_terms(inputs)
