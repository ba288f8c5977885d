"""Trains the Fashion-MNIST reference teacher (`kd_keras.models.cnn_teacher`,
1.25 M parameters) with a longer recipe on a GPU: random 2-pixel shifts and
horizontal flips, AdamW with cosine decay. JAX backend only.

    KERAS_BACKEND=jax python -m benchmarks.gpu_teacher_fashion_mnist \
        --data /usr/share/datasets/fashion-mnist --epochs 40 --out teacher_strong.keras

Why a separate loop: Keras `fit` on NumPy arrays is bound by the host on a
GPU (about 4k images/s on an H100); this keeps the whole training set on the
device and jit-compiles one step with the augmentation inside, via Keras's
`stateless_call` / `stateless_apply`, so the model and optimizer are still
plain Keras objects and the result is an ordinary `.keras` file for the CPU
benchmarks (`--teacher` in `benchmarks/pruning_fashion_mnist.py`).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from kd_keras.data import load_fashion_mnist  # noqa: E402
from kd_keras.models import cnn_teacher  # noqa: E402


def augment(key, images):
    """Random shift by up to `PAD` pixels (zero padding) and a horizontal
    flip with probability 1/2, per image."""
    import jax
    import jax.numpy as jnp

    pad = 2
    k_y, k_x, k_flip = jax.random.split(key, 3)
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = jax.random.randint(k_y, (n,), 0, 2 * pad + 1)
    dx = jax.random.randint(k_x, (n,), 0, 2 * pad + 1)
    crop = jax.vmap(lambda img, i, j: jax.lax.dynamic_slice(img, (i, j, 0), (h, w, c)))(
        padded, dy, dx
    )
    flip = jax.random.bernoulli(k_flip, 0.5, (n, 1, 1, 1))
    return jnp.where(flip, crop[:, :, ::-1, :], crop)


def train(args) -> keras.Model:
    import jax
    import jax.numpy as jnp

    if keras.backend.backend() != "jax":
        raise SystemExit("Run with KERAS_BACKEND=jax (this loop uses jax.jit directly).")
    (x, y), (xt, yt) = load_fashion_mnist(args.data)
    keras.utils.set_random_seed(args.seed)
    model = cnn_teacher()
    steps_per_epoch = len(x) // args.batch_size
    schedule = keras.optimizers.schedules.CosineDecay(
        args.lr, decay_steps=steps_per_epoch * args.epochs, alpha=0.01
    )
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def loss_of(trainable, non_trainable, images, labels):
        logits, non_trainable = model.stateless_call(
            trainable, non_trainable, images, training=True
        )
        return loss_fn(labels, logits), non_trainable

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    @jax.jit
    def step(state, images_all, labels_all, index, key):
        trainable, non_trainable, opt_vars = state
        images = augment(key, images_all[index])
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, images, labels_all[index])
        trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
        return (trainable, non_trainable, opt_vars), loss

    @jax.jit
    def predict(trainable, non_trainable, images):
        return model.stateless_call(trainable, non_trainable, images, training=False)[0]

    x_dev, y_dev, xt_dev = jnp.asarray(x), jnp.asarray(y), jnp.asarray(xt)
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )
    key = jax.random.PRNGKey(args.seed)
    start = time.time()
    for epoch in range(args.epochs):
        key, k_perm = jax.random.split(key)
        order = jax.random.permutation(k_perm, len(x))
        losses = []
        for i in range(steps_per_epoch):
            key, k_aug = jax.random.split(key)
            index = order[i * args.batch_size : (i + 1) * args.batch_size]
            state, loss = step(state, x_dev, y_dev, index, k_aug)
            losses.append(loss)
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            logits = np.concatenate(
                [predict(state[0], state[1], xt_dev[i : i + 2000]) for i in range(0, len(xt), 2000)]
            )
            acc = float(np.mean(logits.argmax(-1) == yt))
            print(
                f"epoch {epoch + 1}: loss {float(np.mean(losses)):.4f}, test acc {acc:.4f}, "
                f"{time.time() - start:.0f} s",
                flush=True,
            )
    for variable, value in zip(model.trainable_variables, state[0]):
        variable.assign(value)
    for variable, value in zip(model.non_trainable_variables, state[1]):
        variable.assign(value)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="folder with the four IDX .gz files")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help=".keras file to write")
    args = parser.parse_args()
    model = train(args)
    tmp = args.out + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
