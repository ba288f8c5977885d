"""QAT of a briefly trained MobileNetV2: BatchNormalization folded with its
moving statistics vs folded with batch statistics (`freeze_bn_delay`).

keras.applications.MobileNetV2 (alpha 0.35, weights=None, 32x32x3, 10
classes, its own BN momentum 0.999) is trained from scratch for a few epochs
on a Fashion-MNIST subset (images resized to 32x32, grey repeated to 3
channels). After so few steps its BN moving statistics still lag far behind
the weights. From that one float model, each row trains one more epoch at
the same learning rate:

* float +1 epoch: the reference;
* QAT, moving-statistics fold: `quantize_model(model, freeze_bn_delay=0)`,
  every BN folded once into its conv with the moving statistics, so QAT
  trains a network whose BNs never see a batch;
* QAT, batch-statistics fold: `quantize_model(model)` (default
  `freeze_bn_delay`), the folded convs normalize with the batch statistics
  (sigma_B / sigma correction) and keep updating the moving statistics.

Columns: training accuracy as `fit` reports it for that epoch (the
training-mode network), test accuracy of the Keras model in inference, and,
for the QAT rows, of the fully int8 `.tflite` from `convert(mode="qat")`.

    python -m benchmarks.qat_batch_norm --train 10000 --test 2000 --epochs 4
"""

from __future__ import annotations

import argparse
import time

import keras
import numpy as np

from benchmarks import common
from benchmarks.common import copy_of
from benchmarks.filter_pruning import to_32x32x3
from kd_keras.bench import evaluate_accuracy
from kd_keras.quantization import convert, quantize_model


def mobilenet_v2(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.applications.MobileNetV2(
        alpha=0.35,
        weights=None,
        input_shape=(32, 32, 3),
        classes=10,
        classifier_activation=None,
    )


def fit_one_epoch(model, x, y, lr, batch) -> tuple[float, float]:
    """Train one epoch; `(training accuracy of that epoch, seconds)`."""
    model.compile(keras.optimizers.Adam(lr), common.CE, metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(x, y, epochs=1, batch_size=batch, verbose=2)
    return float(history.history["accuracy"][-1]), time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=10000, help="training images")
    parser.add_argument("--test", type=int, default=2000, help="test images")
    parser.add_argument("--epochs", type=int, default=4, help="float epochs before QAT")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3, help="float training")
    parser.add_argument("--qat-lr", type=float, default=1e-4, help="the +1 epoch rows")
    parser.add_argument(
        "--freeze-bn-delay", type=int, default=None,
        help="for the batch-statistics row (default: quantize_model's default)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    (x, y), (xt, yt) = common.data()
    rng = np.random.default_rng(args.seed)
    train = rng.permutation(len(x))[: args.train]
    x, y = to_32x32x3(x[train]), y[train]
    xt, yt = to_32x32x3(xt[: args.test]), yt[: args.test]

    model = mobilenet_v2(args.seed)
    model.compile(keras.optimizers.Adam(args.lr), common.CE, metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(x, y, epochs=args.epochs, batch_size=args.batch, verbose=2)
    rows = [
        (
            f"float, {args.epochs} epochs",
            history.history["accuracy"][-1],
            common.accuracy(model, xt, yt),
            None,
            time.perf_counter() - start,
        )
    ]

    reference = copy_of(model)
    train_acc, seconds = fit_one_epoch(reference, x, y, args.qat_lr, args.batch)
    rows.append(("float +1 epoch", train_acc, common.accuracy(reference, xt, yt), None, seconds))

    delay_kwargs = {} if args.freeze_bn_delay is None else {
        "freeze_bn_delay": args.freeze_bn_delay
    }
    for label, kwargs in (
        ("QAT +1 epoch, moving-statistics fold (freeze_bn_delay=0)", {"freeze_bn_delay": 0}),
        (
            "QAT +1 epoch, batch-statistics fold "
            f"(freeze_bn_delay={args.freeze_bn_delay or 'default'})",
            delay_kwargs,
        ),
    ):
        qat = quantize_model(copy_of(model), **kwargs)
        train_acc, seconds = fit_one_epoch(qat, x, y, args.qat_lr, args.batch)
        int8 = convert(qat, mode="qat", int8_io=True)
        int8_acc = evaluate_accuracy(int8, xt, yt)
        rows.append((label, train_acc, common.accuracy(qat, xt, yt), int8_acc, seconds))

    print(
        f"\nMobileNetV2 alpha 0.35, Fashion-MNIST 32x32x3, {args.train} training / "
        f"{args.test} test images, batch {args.batch}, float lr {args.lr}, "
        f"+1 epoch lr {args.qat_lr}\n"
    )
    print("| model | train acc (fit) | test acc (Keras) | test acc (int8 .tflite) | seconds |")
    print("|---|---|---|---|---|")
    for label, train_acc, test_acc, int8_acc, seconds in rows:
        int8_text = "" if int8_acc is None else f"{100 * int8_acc:.2f} %"
        print(
            f"| {label} | {100 * train_acc:.2f} % | {100 * test_acc:.2f} % | {int8_text} | "
            f"{seconds:.0f} |"
        )


if __name__ == "__main__":
    main()
