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
      also when a saved `TextDistiller` is loaded back;
    - a student that shares its teacher's tokenizer (`build_student` does)
      shares it again when loaded: the `.keras` file stores that tokenizer's
      vocabulary once, so two separate copies could not both be restored.

    Args:
        student, teacher, losses, **kwargs: as for `kd_keras.Distiller`.
        shared_tokenizer: `None` (default) keeps the models as given; `True`
            gives the student's preprocessor the teacher's tokenizer object
            (recorded by `get_config` when they share one).

    Example:

    ```python
    distiller = TextDistiller(student, teacher, losses=tinybert_losses(teacher, student), alpha=0.0)
    distiller.compile(optimizer="adam")
    distiller.fit(teacher.preprocessor(texts), labels, epochs=3)
    ```
    """

    def __init__(
        self,
        student,
        teacher=None,
        losses=None,
        shared_tokenizer: bool | None = None,
        **kwargs,
    ):
        if shared_tokenizer:
            _share_tokenizer(student, teacher)
        super().__init__(student=student, teacher=teacher, losses=losses, **kwargs)
        attachable = [t for t in self.distillation_terms if hasattr(t, "attach")]
        if attachable and len(self.teachers) != 1:
            raise ValueError(
                "Attention and hidden-state terms compare one teacher with the "
                f"student; got {len(self.teachers)} teachers."
            )
        for term in attachable:
            if not term.attached:
                term.attach(self.teachers[0], self.student)

    def _build_terms(self, inputs):
        struct = getattr(self.student, "_inputs_struct", None)
        if isinstance(struct, dict):
            inputs = struct
        super()._build_terms(inputs)

    def get_config(self):
        config = super().get_config()
        student_tokenizer = _tokenizer(self.student)
        if student_tokenizer is not None and any(
            _tokenizer(t) is student_tokenizer for t in self.teachers
        ):
            config["shared_tokenizer"] = True
        return config


def _tokenizer(model):
    preprocessor = getattr(model, "preprocessor", None)
    return getattr(preprocessor, "tokenizer", None)


def _share_tokenizer(student, teacher) -> None:
    """Points the student's preprocessor at the teacher's tokenizer."""
    teachers = teacher if isinstance(teacher, (list, tuple)) else [teacher]
    tokenizers = [_tokenizer(t) for t in teachers if _tokenizer(t) is not None]
    preprocessor = getattr(student, "preprocessor", None)
    if not tokenizers or preprocessor is None:
        raise ValueError(
            "shared_tokenizer=True needs a student and a teacher that both have a "
            "keras-hub preprocessor with a tokenizer."
        )
    preprocessor.tokenizer = tokenizers[0]
