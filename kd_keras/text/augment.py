"""TinyBERT-style data augmentation on token ids, for task distillation.

A small labelled set gives a small student few examples of what the teacher
knows. TinyBERT (Jiao et al., 2020, section 3.2) enlarges the transfer set:
each word is replaced, with probability `rate`, by one of its `k` nearest
words, and the teacher labels every new sentence (soft targets), so labels
are never needed for the copies. TinyBERT takes candidates for single-piece
words from BERT's masked-LM head and for other words from GloVe; here both
come from the teacher's own token-embedding table (cosine neighbours), which
every BERT has and which needs no extra download. Only whole words that are
one WordPiece are replaced (a piece followed by `##...` is part of a longer
word), so the sequence length and padding never change.

Example:

```python
vocab = teacher.preprocessor.tokenizer.get_vocabulary()
table = text.word_neighbours(text.token_embedding_matrix(teacher), vocab, k=15)
bigger = text.augment_tokens(tokens, table, text.continuation_mask(vocab), copies=20)
```
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np

from kd_keras.text.student import backbone_of


def is_whole_word(token: str) -> bool:
    """A vocabulary entry that is a whole alphabetic word (`"good"`), not a
    continuation piece (`"##ly"`), a special token (`"[CLS]"`) or
    punctuation: the only entries augmentation replaces or inserts."""
    return token.isalpha() and token.isascii()


def continuation_mask(vocabulary: Sequence[str]) -> np.ndarray:
    """Boolean `(vocab,)`: which ids are WordPiece continuations (`##...`)."""
    return np.array([t.startswith("##") for t in vocabulary], dtype=bool)


def token_embedding_matrix(model: keras.Model) -> np.ndarray:
    """The `(vocab, hidden)` token-embedding table of a keras-hub BERT task
    or backbone."""
    table = backbone_of(model).get_layer("token_embedding").embeddings
    return keras.ops.convert_to_numpy(table)


def word_neighbours(
    embeddings: np.ndarray,
    vocabulary: Sequence[str],
    k: int = 15,
    chunk: int = 2048,
) -> np.ndarray:
    """The `k` nearest whole-word tokens of every whole-word token, by cosine
    similarity of `embeddings` rows (the token itself excluded).

    Returns an int32 `(vocab, k)` table; rows of tokens that are not whole
    words (see `is_whole_word`) are -1, so `augment_tokens` leaves them be.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) != len(vocabulary):
        raise ValueError(
            f"embeddings must be (vocab, hidden) with one row per vocabulary entry; got "
            f"{embeddings.shape} for {len(vocabulary)} entries."
        )
    words = np.flatnonzero([is_whole_word(t) for t in vocabulary])
    if len(words) <= k:
        raise ValueError(f"Only {len(words)} whole-word tokens; need more than k={k}.")
    unit = embeddings[words] / np.maximum(
        np.linalg.norm(embeddings[words], axis=1, keepdims=True), 1e-12
    )
    table = np.full((len(vocabulary), k), -1, dtype=np.int32)
    for start in range(0, len(words), chunk):
        rows = slice(start, start + chunk)
        similarity = unit[rows] @ unit.T
        # A token is not its own neighbour.
        similarity[np.arange(similarity.shape[0]), np.arange(len(words))[rows]] = -np.inf
        top = np.argpartition(-similarity, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(similarity, top, axis=1), axis=1)
        table[words[rows]] = words[np.take_along_axis(top, order, axis=1)]
    return table


def augment_tokens(
    tokens: dict,
    neighbours: np.ndarray,
    continuation: np.ndarray,
    copies: int = 20,
    rate: float = 0.4,
    seed: int = 0,
) -> dict:
    """`copies` augmented versions of every tokenized example.

    Args:
        tokens: `{"token_ids", "padding_mask", "segment_ids"}` arrays of
            shape `(n, sequence_length)` (what `text.tokenize` returns).
        neighbours: the `word_neighbours` table.
        continuation: `continuation_mask(vocabulary)`.
        copies: augmented versions per example (TinyBERT uses 20).
        rate: probability of replacing each replaceable token (TinyBERT's
            p_t = 0.4).
        seed: NumPy seed; the same seed gives the same copies.

    Returns:
        A dict like `tokens` with `n * copies` rows (copy `j` of example `i`
        at row `i * copies + j`) and a `"source"` entry: the row of the
        original each copy came from. Padding masks and segment ids are the
        originals'.
    """
    ids = np.asarray(tokens["token_ids"])
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}.")
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}.")
    if ids.max(initial=0) >= len(neighbours) or len(continuation) != len(neighbours):
        raise ValueError(
            f"token id {ids.max()} or the continuation mask ({len(continuation)}) does "
            f"not fit the neighbour table ({len(neighbours)} rows): build both from the "
            "tokenizer that made `tokens`."
        )
    rng = np.random.default_rng(seed)
    source = np.repeat(np.arange(len(ids)), copies)
    out = ids[source].copy()
    # A piece followed by a continuation is the start of a longer word.
    next_is_piece = np.zeros_like(out, dtype=bool)
    next_is_piece[:, :-1] = continuation[out[:, 1:]]
    replaceable = (neighbours[out, 0] >= 0) & ~next_is_piece
    chosen = replaceable & (rng.random(out.shape) < rate)
    pick = rng.integers(0, neighbours.shape[1], size=int(chosen.sum()))
    out[chosen] = neighbours[out[chosen], pick]
    result = {key: np.asarray(value)[source] for key, value in tokens.items()}
    result["token_ids"] = out.astype(ids.dtype)
    result["source"] = source
    return result


def with_augmented_copies(
    tokens: dict,
    labels: np.ndarray,
    neighbours: np.ndarray,
    continuation: np.ndarray,
    copies: int = 20,
    rate: float = 0.4,
    seed: int = 0,
) -> tuple[dict, np.ndarray]:
    """The transfer set for task distillation: `tokens` followed by their
    `augment_tokens` copies, and `labels` followed by each copy's source
    label (a replaced word can flip it: weight the labels' loss low, or 0,
    and let the teacher's logits label the copies).

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

    tokens = tokenize(teacher, texts)
    # Each whole word's 2 nearest words in the teacher's embedding space.
    table = word_neighbours(token_embedding_matrix(teacher), vocab, k=2)
    x, y = with_augmented_copies(tokens, labels, table, continuation_mask(vocab), copies=3)
    assert len(y) == len(x["token_ids"]) == 4 * len(texts)  # originals + 3 copies each
    ```
    """
    augmented = augment_tokens(tokens, neighbours, continuation, copies, rate, seed)
    source = augmented.pop("source")
    merged = {k: np.concatenate([np.asarray(tokens[k]), augmented[k]]) for k in tokens}
    labels = np.asarray(labels)
    return merged, np.concatenate([labels, labels[source]])
