"""Text distillation benchmark (issue 6): MiniLM-L6 teacher vs 2-layer
students on BBC News (or the VADER movie snippets).

    TF_CPP_MIN_LOG_LEVEL=3 python -m benchmarks.text_bbc_news --seq-len 128
    TF_CPP_MIN_LOG_LEVEL=3 python -m benchmarks.text_bbc_news --dataset vader \
        --vader vaderSentiment-3.3.2.tar.gz

Rows: teacher (MiniLM-L6 fine-tuned), student from scratch (labels only),
student with logits KD (T = 2), student with TinyBERT general distillation
(embedding + hidden + attention, no labels) then logits KD. Students: 2
layers, hidden 128, 2 heads, the teacher's WordPiece tokenizer. Columns:
test accuracy, parameters, TFLite float / dynamic-range sizes, p50 batch-1
latency at 1 thread at --seq-len, each also as a ratio to the teacher.
Teacher logits are computed once per epoch by the Distiller (no cache for
the intermediate-layer rows, which need the teacher's layers). TFLite
export needs the TensorFlow backend; with --no-export (e.g. JAX on a GPU)
only accuracy and parameters are printed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

import kd_keras
from kd_keras import text

OUT = Path(__file__).resolve().parent / "out"


def accuracy(model, x, y) -> float:
    with text.without_preprocessor(model):
        logits = model.predict(x, batch_size=64, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y))


def make_student(teacher, hidden_dim=128):
    return text.build_student(teacher, num_layers=2, hidden_dim=hidden_dim, num_heads=2)


def distil(teacher, student, losses, x, y, epochs, alpha, lr):
    distiller = text.TextDistiller(student, teacher, losses=losses, alpha=alpha)
    distiller.compile(optimizer=keras.optimizers.AdamW(lr))
    distiller.fit(x, y, epochs=epochs, batch_size=32, verbose=2)
    for term in losses:
        if hasattr(term, "detach"):
            term.detach()
    return student


def export_figures(model, folder, sample, seq_len):
    from kd_keras.text.export import export_text_tflite, tflite_latency_ms

    figures = {}
    for quantization in (None, "dynamic"):
        export_text_tflite(model, folder, sample, quantization=quantization, overwrite=True)
        name = "model.tflite" if quantization is None else "model_dynamic.tflite"
        figures[quantization or "float"] = (folder / name).stat().st_size / 1e6
    figures["p50_ms"] = tflite_latency_ms(folder / "model.tflite", seq_len, num_threads=1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["bbc", "vader"], default="bbc")
    parser.add_argument("--vader", default=None)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10, help="student epochs per stage")
    parser.add_argument(
        "--hidden",
        type=int,
        default=128,
        help="student width; the 30,522-token embedding dominates its size "
        "(128: 5.2x fewer parameters than MiniLM-L6)",
    )
    parser.add_argument("--no-export", action="store_true")
    args = parser.parse_args()

    start = time.time()
    keras.utils.set_random_seed(0)
    if args.dataset == "bbc":
        from kd_keras.data.bbc_news import load_bbc_news

        (x_train, y_train), (x_test, y_test) = load_bbc_news(seed=0)
        classes = 5
    else:
        from kd_keras.data.vader_movies import load_vader_movies

        (x_train, y_train), (x_test, y_test) = load_vader_movies(args.vader, seed=0)
        classes = 2

    teacher_dir = OUT / f"text_{args.dataset}_teacher_{args.seq_len}"
    if (teacher_dir / "task.json").exists():
        teacher = text.load_teacher(str(teacher_dir), sequence_length=args.seq_len)
        tokens_train = text.tokenize(teacher, x_train)
    else:
        teacher = text.load_teacher(
            text.minilm_path(), num_classes=classes, sequence_length=args.seq_len
        )
        tokens_train = text.tokenize(teacher, x_train)
        text.fine_tune(teacher, tokens_train, y_train, epochs=args.teacher_epochs, verbose=2)
        teacher.save_to_preset(str(teacher_dir))
    tokens_test = text.tokenize(teacher, x_test)

    rows = {"teacher (MiniLM-L6)": teacher}
    scratch = make_student(teacher, args.hidden)
    text.fine_tune(
        scratch, tokens_train, y_train, epochs=args.epochs, learning_rate=1e-3, verbose=2
    )
    rows["student, scratch"] = scratch
    soft = [kd_keras.losses.SoftTargetKD(temperature=2.0)]
    rows["student, logits KD"] = distil(
        teacher,
        make_student(teacher, args.hidden),
        soft,
        tokens_train,
        y_train,
        args.epochs,
        0.1,
        1e-3,
    )
    tiny = make_student(teacher, args.hidden)
    distil(
        teacher,
        tiny,
        text.tinybert_losses(teacher, tiny),
        tokens_train,
        None,
        args.epochs,
        0.0,
        1e-3,
    )
    soft = [kd_keras.losses.SoftTargetKD(temperature=2.0)]
    rows["student, hidden+attention+logits KD"] = distil(
        teacher, tiny, soft, tokens_train, y_train, args.epochs, 0.1, 1e-3
    )

    sample = {k: v[:64] for k, v in tokens_test.items()}
    table = []
    for name, model in rows.items():
        row = {
            "name": name,
            "acc": accuracy(model, tokens_test, y_test),
            "params": model.count_params(),
        }
        if not args.no_export:
            with tempfile.TemporaryDirectory() as folder:
                row.update(export_figures(model, Path(folder), sample, args.seq_len))
        table.append(row)

    ref = table[0]
    print(
        f"\n{args.dataset}: {len(y_test)} test samples, seq len {args.seq_len}, "
        f"backend {keras.backend.backend()}, total {time.time() - start:.0f} s"
    )
    header = "| model | accuracy (× teacher) | params (teacher ÷) |"
    if not args.no_export:
        header += " TFLite float MB | TFLite dynamic MB | p50 ms, 1 thread (teacher ÷) |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for row in table:
        line = (
            f"| {row['name']} | {row['acc']:.4f} ({row['acc'] / ref['acc']:.3f}) | "
            f"{row['params']:,} ({ref['params'] / row['params']:.1f}×) |"
        )
        if not args.no_export:
            line += (
                f" {row['float']:.2f} | {row['dynamic']:.2f} | {row['p50_ms']:.2f} "
                f"({ref['p50_ms'] / row['p50_ms']:.1f}×) |"
            )
        print(line)


if __name__ == "__main__":
    main()
