"""A small Transformer text classifier, float32 vs int8 `.tflite`, on BBC News
and the VADER movie snippets.

The classifier is what a phone app ships for on-device text classification:
int32 token ids of a fixed length in, a token + position `Embedding`, one
Transformer encoder block (`MultiHeadAttention`, residual `Add`,
`LayerNormalization`, a GELU feed-forward), `GlobalAveragePooling1D` and a
`Dense` head. Words are mapped to ids outside the graph by a
`keras.layers.TextVectorization` adapted on the training split. It trains
from scratch for `--epochs` epochs on the training split (a minute or two on
a CPU), then is converted by the one `kd_keras.quantization.convert` path:

- float32 (`mode=None`);
- dynamic-range int8 (`mode="dynamic"`: int8 weights, float activations);
- full int8 post-training quantization (`mode="int8"`, calibrated on
  `--calibration` training sequences; token ids stay int32, logits come out
  float through one DEQUANTIZE).

Each file's accuracy is measured in LiteRT (`kd_keras.bench.evaluate_accuracy`)
on the whole test split, beside the Keras model's, with the file size and the
ops of the full-int8 file that still compute in float.

    python -m benchmarks.text_transformer_int8 --dataset bbc
    python -m benchmarks.text_transformer_int8 --dataset vader \
        --vader ~/.cache/kd_keras/vader/vaderSentiment-3.3.2.tar.gz
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

from benchmarks.latency_224 import float_ops
from kd_keras.bench import evaluate_accuracy
from kd_keras.data import load_bbc_news, load_vader_movies
from kd_keras.quantization import convert


class PositionEmbedding(keras.layers.Layer):
    """Adds a learned vector per position (the sequence length is fixed)."""

    def build(self, input_shape):
        self.positions = self.add_weight(
            shape=tuple(input_shape[1:]), initializer="uniform", name="positions"
        )

    def call(self, x):
        return x + self.positions


def transformer_classifier(
    vocabulary: int, length: int, classes: int, dim: int = 64, heads: int = 2
) -> keras.Model:
    ids = keras.Input((length,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(vocabulary, dim, name="token_embedding")(ids)
    x = PositionEmbedding(name="position_embedding")(x)
    attention = keras.layers.MultiHeadAttention(heads, dim // heads, name="attention")(x, x)
    x = keras.layers.LayerNormalization(name="attention_norm")(keras.layers.Add()([x, attention]))
    h = keras.layers.Dense(2 * dim, activation="gelu", name="ffn_in")(x)
    h = keras.layers.Dense(dim, name="ffn_out")(h)
    x = keras.layers.LayerNormalization(name="ffn_norm")(keras.layers.Add()([x, h]))
    x = keras.layers.GlobalAveragePooling1D()(x)
    x = keras.layers.Dropout(0.1)(x)
    return keras.Model(ids, keras.layers.Dense(classes, name="logits")(x), name="text_transformer")


def load(dataset: str, vader_path: str | None):
    if dataset == "bbc":
        return load_bbc_news()
    return load_vader_movies(vader_path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["bbc", "vader"], default="bbc")
    parser.add_argument("--vader", help="path of vaderSentiment-3.3.2.tar.gz")
    parser.add_argument("--seq-len", type=int, default=None, help="default: bbc 256, vader 48")
    parser.add_argument("--vocabulary", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=None, help="default: bbc 6, vader 4")
    parser.add_argument("--calibration", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    length = args.seq_len or (256 if args.dataset == "bbc" else 48)
    epochs = args.epochs or (6 if args.dataset == "bbc" else 4)

    (x_text, y), (xt_text, yt) = load(args.dataset, args.vader)
    keras.utils.set_random_seed(args.seed)
    vectorize = keras.layers.TextVectorization(
        max_tokens=args.vocabulary, output_sequence_length=length
    )
    vectorize.adapt(list(x_text))
    x = np.asarray(vectorize(list(x_text)), dtype="int32")
    xt = np.asarray(vectorize(list(xt_text)), dtype="int32")
    classes = int(max(y.max(), yt.max()) + 1)

    start = time.perf_counter()
    model = transformer_classifier(vectorize.vocabulary_size(), length, classes)
    model.compile(
        keras.optimizers.AdamW(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=2)
    train_s = time.perf_counter() - start
    keras_accuracy = evaluate_accuracy(model, xt, yt)

    start = time.perf_counter()
    files = {
        "float32": convert(model),
        "dynamic-range int8": convert(model, mode="dynamic"),
        "full int8 (PTQ)": convert(
            model,
            mode="int8",
            representative_data=x[: args.calibration],
            num_calibration_batches=args.calibration,
        ),
    }
    convert_s = time.perf_counter() - start
    accuracy = {
        name: evaluate_accuracy(b, xt, yt)
        for name, b in files.items()
    }

    print(
        f"\n{args.dataset}: {len(x)} train / {len(xt)} test, {classes} classes, sequence "
        f"length {length}, vocabulary {vectorize.vocabulary_size()}, "
        f"{model.count_params():,} parameters; {epochs} epochs in {train_s:.0f} s, "
        f"conversions {convert_s:.0f} s; Keras test accuracy {100 * keras_accuracy:.2f} %\n"
    )
    print("| file | size KB | size × float32 | test accuracy | Δ vs float32 (pt) |")
    print("|---|---|---|---|---|")
    for name, b in files.items():
        print(
            f"| {name} | {len(b) / 1024:.1f} | {len(b) / len(files['float32']):.2f} | "
            f"{100 * accuracy[name]:.2f} % | "
            f"{100 * (accuracy[name] - accuracy['float32']):+.2f} |"
        )
    print(f"\nops computing in float in the full-int8 file: {float_ops(files['full int8 (PTQ)'])}")


if __name__ == "__main__":
    main()
