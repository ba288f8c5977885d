"""Fashion-MNIST (60k/10k): teacher vs. student from scratch vs. distilled.

Needs the Debian package's IDX files (`apt-get install dataset-fashion-mnist`,
or `--data-dir` / `KD_KERAS_FASHION_MNIST` pointing to the four files).

    python examples/fashion_mnist.py                      # full data, defaults
    python examples/fashion_mnist.py --epochs 2 --limit 6000   # quick look

The teacher is `kd_keras.models.cnn_teacher()` (~1.25 M parameters), the
student `cnn_student()` (~9.2 k). Both students start from the same weights;
the distilled one learns from soft targets on cached teacher logits. For the
recorded multi-seed figures see `benchmarks/`.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from kd_keras import demo  # noqa: E402
from kd_keras.data import few_labels_split, load_fashion_mnist  # noqa: E402
from kd_keras.models import cnn_student, cnn_teacher  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs of each student")
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--limit", type=int, default=None,
        help="train on a class-balanced subset of this many images (test set stays 10k)",
    )
    parser.add_argument("--data-dir", default=None, help="folder of the four IDX files")
    parser.add_argument("--out", default=None, help="folder for demo.json + demo_curves.png")
    parser.add_argument("--overwrite", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.out is not None:
        demo.output_paths(args.out, overwrite=args.overwrite)  # fail before training
    (x_train, y_train), test = load_fashion_mnist(args.data_dir)
    if args.limit is not None:
        keep = few_labels_split(y_train, labelled=args.limit, seed=args.seed)
        x_train, y_train = x_train[keep], y_train[keep]
    results = demo.compare(
        ((x_train, y_train), test),
        cnn_teacher,
        cnn_student,
        epochs=args.epochs,
        teacher_epochs=args.teacher_epochs,
        temperature=args.temperature,
        alpha=args.alpha,
        batch_size=args.batch_size,
        seed=args.seed,
        verbose=2,
    )
    demo.print_table(
        results,
        title=f"Fashion-MNIST: {len(x_train):,} train / {len(test[1]):,} test, "
        f"seed {args.seed}, {keras.backend.backend()}",
    )
    if args.out is not None:
        config = {"dataset": "fashion-mnist", **vars(args)}
        paths = demo.write_outputs(results, config, args.out, overwrite=args.overwrite)
        print("wrote", *paths)


if __name__ == "__main__":
    main()
