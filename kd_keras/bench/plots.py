"""PNG plots (matplotlib, Agg backend: no display needed).

- `plot_frontier`: accuracy against p50 latency, marker area proportional to
  file size, with the Pareto frontier (no other model is both faster and
  more accurate) drawn through the points that lie on it.
- `plot_history`: training curves from a `keras.callbacks.History` or its
  `.history` dict, one panel per metric with its `val_` twin.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from kd_keras.export import atomic


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of `(latency, accuracy)` points no other point dominates
    (lower-or-equal latency and higher-or-equal accuracy, one strictly),
    sorted by latency.

    Example:

    ```python
    pareto_front([(1.0, 0.9), (2.0, 0.8), (3.0, 0.95)])  # [0, 2]
    ```
    """
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(
            (l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc)
            for j, (l2, a2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_frontier(
    report,
    path: str | os.PathLike,
    threads: int | None = 1,
    overwrite: bool = False,
    title: str = "Accuracy vs latency (marker area ∝ file size)",
) -> Path:
    """Plots each artifact of a `BenchReport` at its latency for `threads`.

    Example:

    ```python
    plot_frontier(report, "out/frontier.png", threads=1)
    ```
    """
    plt = _pyplot()
    names, runtimes, points, sizes = [], [], [], []
    for artifact in report.artifacts:
        result = artifact.latency_for(threads)
        if result is None or artifact.accuracy is None:
            continue
        latency = result.p50_ms if result.p50_ms is not None else result.mean_ms
        names.append(artifact.name)
        runtimes.append(artifact.runtime)
        points.append((latency, artifact.accuracy))
        sizes.append(artifact.size.raw_bytes if artifact.size else None)
    if not points:
        raise ValueError("No artifact has both a latency and an accuracy to plot.")
    known = [s for s in sizes if s]
    largest = max(known) if known else 1
    # Area ∝ size, between 40 and 1200 pt² so the smallest stays visible.
    areas = [40 + 1160 * (s / largest) if s else 60 for s in sizes]
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    xs, ys = [p[0] for p in points], [100 * p[1] for p in points]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, runtime in enumerate(dict.fromkeys(runtimes)):
        idx = [i for i, r in enumerate(runtimes) if r == runtime]
        ax.scatter(
            [xs[i] for i in idx],
            [ys[i] for i in idx],
            s=[areas[i] for i in idx],
            color=colors[k % len(colors)],
            alpha=0.6,
            edgecolors="black",
            linewidths=0.8,
            zorder=3,
            label=runtime,
        )
    front = pareto_front(points)
    ax.plot(
        [xs[i] for i in front],
        [ys[i] for i in front],
        "--",
        color="gray",
        label="Pareto frontier",
        zorder=2,
    )
    order = sorted(range(len(points)), key=lambda i: (xs[i], ys[i]))
    for rank, i in enumerate(order):
        label = names[i] + (f" ({sizes[i] / 1024:.1f} KB)" if sizes[i] else " (in memory)")
        # Alternate above / below so neighbours' labels do not collide.
        offset = (6, 10) if rank % 2 == 0 else (6, -16)
        ax.annotate(label, (xs[i], ys[i]), textcoords="offset points", xytext=offset, fontsize=8)
    if max(xs) / max(min(xs), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency (ms), threads={threads}")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    # Fixed-size legend markers: their area would otherwise read as a size.
    legend = ax.legend(loc="best", fontsize=8, markerscale=1.0)
    for handle in legend.legend_handles:
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([50])
    ax.margins(x=0.25, y=0.15)
    return _save(fig, path, overwrite)


def plot_history(
    history: Any,
    path: str | os.PathLike,
    overwrite: bool = False,
    title: str = "Training curves",
) -> Path:
    """Plots training curves from a `History` or a `{metric: [values]}` dict.

    Example:

    ```python
    history = distiller.fit(x, y, validation_split=0.1, epochs=10)
    plot_history(history, "out/curves.png")
    ```
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    logs: Mapping[str, Sequence[float]] = getattr(history, "history", history)
    if not isinstance(logs, Mapping) or not logs:
        raise ValueError(
            "history must be a keras History or a non-empty {metric: [values]} dict, "
            f"got {type(history).__name__}."
        )
    metrics = sorted({k[4:] if k.startswith("val_") else k for k in logs})
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=120, squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
            if key in logs:
                values = list(logs[key])
                ax.plot(range(1, len(values) + 1), values, style, markersize=3, label=key)
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path, overwrite)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, overwrite: bool) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic.write_bytes(path, buffer.getvalue(), overwrite)
