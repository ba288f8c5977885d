"""Text distillation students trained on a GPU with the JAX backend,
with TinyBERT's data augmentation and principal-component embedding init.

The GPU machine has JAX but no TensorFlow (no WordPiece tokenizer, no TFLite
converter), so the work is split in three, the first and last on a machine
with TensorFlow:

    # 1. tokenize, write the cached teacher's weights (float16, to travel) and
    #    the augmentation tables; the teacher comes from benchmarks.text_bbc_news
    python -m benchmarks.text_gpu prepare --vader ARCHIVE --seq-len 64 --dir .textgpu
    # 2. on the GPU machine: train the students, write their weights
    KERAS_BACKEND=jax python -m benchmarks.text_gpu train --dir .textgpu --out OUT
    # 3. export what it wrote: TFLite sizes, parity, 1-thread latency, the table
    python -m benchmarks.text_gpu finish --dir .textgpu --students OUT

Run names (`train --runs`) combine a recipe and options: `scratch` (labels
only), `logits` (logits KD), `tinybert` (general distillation of embeddings,
hidden states and attention maps, then logits KD); `-pca` initialises the
student's embeddings from the teacher's principal components
(`text.project_embeddings`); `-aug` distils on the training set plus
`--copies` TinyBERT-style augmented copies of each sentence labelled by the
teacher alone (`text.augment_tokens`). The teacher evaluated on the GPU has
float16-rounded weights; its accuracy is printed beside the float32 one.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

import kd_keras
from benchmarks.text_bbc_news import (
    accuracy,
    distil,
    export_figures,
    load_dataset,
    load_or_train_teacher,
    make_student,
    print_table,
)
from kd_keras import text

RECIPES = ("scratch", "logits", "tinybert")
MAIN_RUNS = ["tinybert-pca-aug", "logits-pca-aug", "scratch-pca"]


def _tokens(ids: np.ndarray) -> dict:
    ids = ids.astype("int32")
    return {
        "token_ids": ids,
        "padding_mask": (ids != 0).astype("int32"),
        "segment_ids": np.zeros_like(ids),
    }


def prepare(args) -> None:
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    (x_train, y_train), (x_test, y_test), classes = load_dataset(args)
    teacher, train = load_or_train_teacher(args, x_train, y_train, classes)
    test = text.tokenize(teacher, x_test)
    for split in (train, test):
        # Only token ids travel; the rest must be what _tokens rebuilds.
        rebuilt = _tokens(split["token_ids"])
        if any(not np.array_equal(rebuilt[k], split[k]) for k in rebuilt):
            raise SystemExit("padding mask / segment ids are not derivable from the ids")
    vocab = teacher.preprocessor.tokenizer.get_vocabulary()
    np.savez_compressed(
        folder / "tokens.npz",
        train_ids=train["token_ids"].astype("uint16"),
        test_ids=test["token_ids"].astype("uint16"),
        y_train=y_train,
        y_test=y_test,
    )
    np.save(folder / "continuation.npy", text.continuation_mask(vocab))
    np.save(
        folder / "neighbours.npy",
        text.word_neighbours(text.token_embedding_matrix(teacher), vocab, k=args.k),
    )
    config = teacher.get_config()
    config["preprocessor"] = None
    record = {
        "teacher_config": keras.saving.serialize_keras_object(config),
        "teacher_acc_float32": accuracy(teacher, test, y_test),
        "args": vars(args),
    }
    (folder / "teacher.json").write_text(json.dumps(record))
    np.savez(
        folder / "teacher_fp16.npz",
        **{
            w.path.replace("/", "|"): keras.ops.convert_to_numpy(w).astype("float16")
            for w in teacher.weights
        },
    )
    print(f"wrote {folder}: teacher acc {record['teacher_acc_float32']:.4f}")


def load_gpu_teacher(folder: Path) -> keras.Model:
    hub = text.keras_hub_module()
    record = json.loads((folder / "teacher.json").read_text())
    teacher = hub.models.BertTextClassifier.from_config(
        keras.saving.deserialize_keras_object(record["teacher_config"])
    )
    values = np.load(folder / "teacher_fp16.npz")
    for w in teacher.weights:
        w.assign(values[w.path.replace("/", "|")].astype("float32"))
    return teacher


def train(args) -> None:
    folder, out = Path(args.dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = np.load(folder / "tokens.npz")
    n = args.limit  # None: all
    train_x, test_x = _tokens(data["train_ids"][:n]), _tokens(data["test_ids"][:n])
    y_train, y_test = data["y_train"][:n], data["y_test"][:n]
    teacher = load_gpu_teacher(folder)
    record = json.loads((folder / "teacher.json").read_text())
    rows = [
        {
            "name": "teacher (MiniLM-L6, float16 weights)",
            "acc": accuracy(teacher, test_x, y_test),
            "acc_float32": record["teacher_acc_float32"],
            "params": teacher.count_params(),
        }
    ]
    print(rows[0], flush=True)
    transfer_x, transfer_labels = text.with_augmented_copies(
        train_x,
        y_train,
        np.load(folder / "neighbours.npy"),
        np.load(folder / "continuation.npy"),
        copies=args.copies,
        rate=args.rate,
        seed=0,
    )
    tick = time.time()
    transfer_logits = text.predict_logits(teacher, transfer_x, batch_size=512)
    print(f"{len(transfer_labels)} sentences labelled in {time.time() - tick:.0f} s", flush=True)
    transfer_y = {"labels": transfer_labels, "teacher_logits": transfer_logits}
    n = len(y_train)
    logits = transfer_logits[:n]
    agreement = float(np.mean(transfer_logits[n:].argmax(-1) == transfer_labels[n:]))
    print(f"teacher keeps the source label on {agreement:.3f} of the copies", flush=True)

    def soft():
        return [kd_keras.losses.SoftTargetKD(temperature=args.temperature)]

    for name in args.runs:
        recipe, *options = name.split("-")
        if recipe not in RECIPES or not set(options) <= {"pca", "aug"}:
            raise SystemExit(f"unknown run {name!r}: {RECIPES} with -pca / -aug")
        keras.utils.set_random_seed(args.seed)
        tick = time.time()
        student = make_student(teacher, args.hidden, "pca" if "pca" in options else False)
        if "aug" in options:
            # Copies are labelled by the teacher alone (their words changed).
            x, y, epochs, alpha, batch = (
                transfer_x,
                transfer_y,
                args.aug_epochs,
                0.0,
                args.aug_batch,
            )
        else:
            x, y, epochs, alpha, batch = (
                train_x,
                {"labels": y_train, "teacher_logits": logits},
                args.epochs,
                args.alpha,
                32,
            )
        if recipe == "scratch":
            text.fine_tune(
                student, train_x, y_train, epochs=args.epochs, learning_rate=1e-3, verbose=2
            )
        else:
            if recipe == "tinybert":
                terms = text.tinybert_losses(teacher, student)
                distil(teacher, student, terms, x, None, epochs, 0.0, args.lr, batch)
            distil(None, student, soft(), x, y, epochs, alpha, args.lr, batch)
        row = {
            "name": name,
            "seed": args.seed,
            "acc": accuracy(student, test_x, y_test),
            "params": student.count_params(),
            "train_s": time.time() - tick,
            "epochs": epochs,
            "batch": batch,
            "examples": len(y["labels"]) if recipe != "scratch" else len(y_train),
        }
        rows.append(row)
        print(row, flush=True)
        if name in args.save:
            student.save_weights(out / f"{name}.weights.h5")
        (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


def finish(args) -> None:
    folder, students = Path(args.dir), Path(args.students)
    record = json.loads((folder / "teacher.json").read_text())
    prep = argparse.Namespace(**record["args"])
    (x_train, y_train), (x_test, _), classes = load_dataset(prep)
    teacher, _ = load_or_train_teacher(prep, x_train, y_train, classes)
    data = np.load(folder / "tokens.npz")
    test_x, y_test = _tokens(data["test_ids"]), data["y_test"]
    gpu = json.loads((students / "results.json").read_text())
    table, rows = [], {"teacher (MiniLM-L6)": teacher}
    for row in gpu["rows"][1:]:
        weights = students / f"{row['name']}.weights.h5"
        if weights.exists():
            student = make_student(teacher, gpu["args"]["hidden"])
            student.load_weights(weights)
            rows[f"student, {row['name']} (GPU, JAX)"] = student
    sample = {k: v[:64] for k, v in test_x.items()}
    for name, model in rows.items():
        row = {"name": name, "acc": accuracy(model, test_x, y_test), "params": model.count_params()}
        with tempfile.TemporaryDirectory() as tmp:
            row.update(export_figures(model, Path(tmp), sample, prep.seq_len))
        table.append(row)
    print_table(table, export=True)
    out = Path(args.out or students / "finish.json")
    out.write_text(json.dumps({"gpu": gpu, "rows": table}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--dataset", choices=["bbc", "vader"], default="vader")
    p.add_argument("--vader", default=None)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--teacher-epochs", type=int, default=2)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--k", type=int, default=15, help="neighbours per word")
    p.add_argument("--dir", required=True)
    t = sub.add_parser("train")
    t.add_argument("--dir", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--runs", nargs="+", default=MAIN_RUNS)
    t.add_argument("--save", nargs="*", default=MAIN_RUNS)
    t.add_argument("--hidden", type=int, default=96)
    t.add_argument("--epochs", type=int, default=10, help="epochs per stage without -aug")
    t.add_argument("--aug-epochs", type=int, default=3, help="epochs per stage with -aug")
    t.add_argument("--aug-batch", type=int, default=128)
    t.add_argument("--copies", type=int, default=20)
    t.add_argument("--rate", type=float, default=0.4)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--temperature", type=float, default=2.0)
    t.add_argument("--alpha", type=float, default=0.5)
    t.add_argument("--seed", type=int, default=0, help="student init and shuffling")
    t.add_argument("--limit", type=int, default=None, help="first N examples (a smoke run)")
    f = sub.add_parser("finish")
    f.add_argument("--dir", required=True)
    f.add_argument("--students", required=True)
    f.add_argument("--out", default=None)
    args = parser.parse_args()
    {"prepare": prepare, "train": train, "finish": finish}[args.command](args)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
