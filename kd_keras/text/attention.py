"""The one hook that reads attention probabilities out of keras-hub
transformer layers.

keras-hub's `TransformerEncoder` (BERT, MiniLM, ...) calls a Keras
`MultiHeadAttention` without `return_attention_scores`, so the probabilities
are never returned, and when dropout is 0 Keras even takes the fused
`dot_product_attention` path that never materialises them. The hook wraps
the attention layer's `_compute_attention` (the method Keras documents for
overriding) on that one layer instance: it asks for the scores, which also
forces the explicit softmax path, keeps the probabilities (softmax output,
before attention dropout) and the attention mask of the latest call, and
returns to the caller exactly what it asked for. The model's outputs do not
change (the explicit path is the textbook formula the fused kernel
computes).

Like `kd_keras.record_outputs` it patches the instance only (never the
class) and nothing of it is saved with the model.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterable

import keras

from kd_keras.features import resolve_layer

_ATTRIBUTE = "_kd_attention_capture"


def attention_layer(layer: keras.layers.Layer) -> keras.layers.MultiHeadAttention:
    """The `MultiHeadAttention` of a transformer encoder layer (keras-hub's
    `TransformerEncoder` keeps it in `_self_attention_layer`), or `layer`
    itself when it is one."""
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return layer
    inner = getattr(layer, "_self_attention_layer", None)
    if isinstance(inner, keras.layers.MultiHeadAttention):
        return inner
    raise TypeError(
        f"Layer '{layer.name}' ({type(layer).__name__}) has no self-attention "
        "to read: name a keras-hub TransformerEncoder (e.g. "
        "'transformer_layer_0') or a keras.layers.MultiHeadAttention."
    )


class AttentionCapture:
    """What the hook keeps for one attention layer: `probabilities`
    `(batch, heads, query, key)` and `mask` (the boolean-like attention mask
    the layer received, `(batch, 1 or query, key)`, or None) of its latest
    call. A plain object, so Keras never tracks or saves it."""

    def __init__(self, layer: keras.layers.MultiHeadAttention):
        self.layer = layer
        self.probabilities = None
        self.mask = None
        self.users = 0
        self.listeners: list[Callable] = []

    def key_mask(self):
        """`(batch, key)` 1 for real (attendable) tokens, or None."""
        if self.mask is None:
            return None
        mask = keras.ops.cast(self.mask, "float32")
        while len(mask.shape) > 2:
            mask = mask[:, 0]  # a padding mask is the same for every query
        return mask

    def require(self):
        if self.probabilities is None:
            raise RuntimeError(
                f"No attention probabilities were recorded for layer "
                f"'{self.layer.name}': the model has not run since the hook "
                "was installed."
            )
        return self.probabilities


def capture_attention(layer: keras.layers.Layer) -> AttentionCapture:
    """Installs the hook on the attention of `layer` (idempotent; each call
    must be paired with `release_attention`) and returns its capture."""
    layer = attention_layer(layer)
    capture = layer.__dict__.get(_ATTRIBUTE)
    if capture is None:
        capture = AttentionCapture(layer)
        original = layer._compute_attention

        @functools.wraps(original)
        def capturing(
            query,
            key,
            value,
            attention_mask=None,
            training=None,
            return_attention_scores=False,
            **kwargs,
        ):
            output, probabilities = original(
                query,
                key,
                value,
                attention_mask=attention_mask,
                training=training,
                return_attention_scores=True,
                **kwargs,
            )
            capture.probabilities, capture.mask = probabilities, attention_mask
            for listener in capture.listeners:
                listener(probabilities)
            return output, (probabilities if return_attention_scores else None)

        # object.__setattr__: a temporary instance attribute Keras must not
        # track or save.
        object.__setattr__(layer, "_compute_attention", capturing)
        object.__setattr__(layer, _ATTRIBUTE, capture)
    capture.users += 1
    return capture


def release_attention(layer: keras.layers.Layer) -> None:
    """Undoes one `capture_attention`; the last release removes the hook."""
    layer = attention_layer(layer)
    capture = layer.__dict__.get(_ATTRIBUTE)
    if capture is None:
        return
    capture.users -= 1
    if capture.users <= 0:
        object.__delattr__(layer, "_compute_attention")
        object.__delattr__(layer, _ATTRIBUTE)


@contextlib.contextmanager
def record_attention(model: keras.layers.Layer, paths: Iterable[str]):
    """Context manager in the style of `kd_keras.record_outputs`: while
    active, running `model` records the attention probabilities
    `(batch, heads, query, key)` of the transformer layers at `paths` into
    the yielded dict.

    Example:

    ```python
    import keras_hub

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "bad", "film", "plot"]

    # A tiny BERT classifier built from config; a real one comes from a preset,
    # `load_classifier("bert_tiny_en_uncased", num_classes=2)`.
    classifier = keras_hub.models.BertTextClassifier(
        keras_hub.models.BertBackbone(
            vocabulary_size=len(vocab), num_layers=4, num_heads=2,
            hidden_dim=16, intermediate_dim=32, max_sequence_length=8,
        ),
        num_classes=2,
        preprocessor=keras_hub.models.BertTextClassifierPreprocessor(
            keras_hub.models.BertTokenizer(vocabulary=vocab), sequence_length=8
        ),
    )

    inputs = tokenize(classifier, ["a good film", "bad plot"])
    with record_attention(classifier, ["transformer_layer_0"]) as attention:
        logits = classifier(inputs)
    probabilities = np.asarray(attention["transformer_layer_0"])  # (batch, heads, query, key)
    assert probabilities.shape == (2, 2, 8, 8)
    assert np.allclose(probabilities.sum(-1), 1.0, atol=1e-5)  # rows sum to 1 over real tokens
    ```
    """
    recorded: dict = {}
    installed = []
    try:
        for path in dict.fromkeys(paths):
            layer = resolve_layer(model, path)

            def listener(probabilities, __path=path):
                recorded[__path] = probabilities

            capture = capture_attention(layer)
            capture.listeners.append(listener)
            installed.append((layer, capture, listener))
        yield recorded
    finally:
        for layer, capture, listener in installed:
            capture.listeners.remove(listener)
            release_attention(layer)
