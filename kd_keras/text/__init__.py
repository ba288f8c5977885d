"""Text distillation: a keras-hub BERT teacher (MiniLM-L6 offline, or any
keras-hub preset), small BERT students sharing its tokenizer, and TinyBERT's
hidden-state, attention-map and embedding terms for `kd_keras.Distiller`
(which attaches them to both models and takes the dict of token ids;
`TextDistiller` is its former name, kept for code and saved files).

Example:

```python
import kd_keras
from kd_keras import text

teacher = text.load_teacher(text.minilm_path(), num_classes=5, sequence_length=128)
student = text.build_student(teacher, num_layers=2, hidden_dim=128, num_heads=2)
terms = text.tinybert_losses(teacher, student)
distiller = kd_keras.Distiller(student, teacher, losses=terms, alpha=0.0)
```
"""

from kd_keras.text.attention import (
    AttentionCapture,
    attention_layer,
    capture_attention,
    record_attention,
    release_attention,
)
from kd_keras.text.augment import (
    augment_tokens,
    continuation_mask,
    token_embedding_matrix,
    with_augmented_copies,
    word_neighbours,
)
from kd_keras.text.distiller import TextDistiller
from kd_keras.text.losses import (
    AttentionMapLoss,
    EmbeddingMSE,
    HiddenStateMSE,
    attention_map_loss,
    tinybert_losses,
)
from kd_keras.text.student import (
    backbone_of,
    build_student,
    build_token_classifier,
    initialize_from_teacher,
    project_embeddings,
    uniform_layer_map,
)
from kd_keras.text.teacher import (
    fine_tune,
    keras_hub_module,
    load_backbone,
    load_teacher,
    minilm_path,
    predict_logits,
    tokenize,
    without_preprocessor,
)

__all__ = [
    "AttentionCapture",
    "AttentionMapLoss",
    "EmbeddingMSE",
    "HiddenStateMSE",
    "TextDistiller",
    "attention_layer",
    "augment_tokens",
    "continuation_mask",
    "attention_map_loss",
    "backbone_of",
    "build_student",
    "build_token_classifier",
    "capture_attention",
    "fine_tune",
    "initialize_from_teacher",
    "keras_hub_module",
    "load_backbone",
    "load_teacher",
    "minilm_path",
    "predict_logits",
    "project_embeddings",
    "record_attention",
    "release_attention",
    "tinybert_losses",
    "token_embedding_matrix",
    "tokenize",
    "uniform_layer_map",
    "with_augmented_copies",
    "without_preprocessor",
    "word_neighbours",
]
