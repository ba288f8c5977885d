"""PNG plots (matplotlib, Agg backend: no display needed).

- `plot_frontier`: accuracy against p50 latency, marker area proportional to
  file size, with the Pareto frontier (no other model is both faster and
  more accurate) drawn through the points that lie on it; labels are placed
  by `place_labels` so that none overlaps another label or a marker.
- `plot_history`: training curves from a `keras.callbacks.History` or its
  `.history` dict, one panel per metric with its `val_` twin.
"""

from __future__ import annotations

import io
import math
import os
import random
from pathlib import Path
from typing import Any, Mapping, Sequence

from kd_keras.io import write_bytes


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
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    kd_keras.export.to_tflite(
        student, "out/student_int8.tflite", quantization="dynamic", sample_inputs=x
    )
    report = kd_keras.bench.benchmark(
        {"student": student, "student int8": "out/student_int8.tflite"},
        x, y, threads=(1,), xnnpack=(True,), runs=5, warmup=1, measure_peak=False)

    plot_frontier(report, "out/frontier.png", threads=1)
    ```
    """
    return _save(frontier_figure(report, threads, title), path, overwrite, layout=False)


def frontier_figure(
    report,
    threads: int | None = 1,
    title: str = "Accuracy vs latency (marker area ∝ file size)",
):
    """The matplotlib `Figure` `plot_frontier` saves: one marker per artifact
    (area ∝ file size), the Pareto frontier, and labels placed so that no two
    overlap (`place_labels`). The layout is final: draw or save it as it is.

    Example:

    ```python
    fig = frontier_figure(report)
    fig.savefig("frontier.svg")
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
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
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
    if max(xs) / max(min(xs), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(f"p50 latency (ms), threads={threads}")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    # Outside the axes, so it never covers a marker or a label. Fixed-size
    # legend markers: their area would otherwise read as a size.
    legend = ax.legend(
        loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8, markerscale=1.0
    )
    for handle in legend.legend_handles:
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([50])
    # Room for labels beside the outermost markers.
    ax.margins(x=0.3, y=0.2)
    # Labels are placed in display coordinates: fix the layout first.
    fig.tight_layout()
    labels = [
        name + (f" ({size / 1024:.1f} KB)" if size else " (in memory)")
        for name, size in zip(names, sizes)
    ]
    place_labels(ax, list(zip(xs, ys)), labels, areas)
    return fig


def _direction(degrees: float) -> tuple[tuple[float, float], str, str]:
    """A unit vector and the text alignment that makes a label grow away
    from its point in that direction."""
    dx, dy = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    ha = "left" if dx > 0.3 else "right" if dx < -0.3 else "center"
    va = "bottom" if dy > 0.3 else "top" if dy < -0.3 else "center"
    return (dx, dy), ha, va


# Right and left first (they read best beside a marker), then the diagonals,
# above and below, then the directions in between (more paths for a leader
# line out of a crowd).
_DIRECTIONS = tuple(
    _direction(d)
    for d in (
        0,
        180,
        45,
        -45,
        135,
        -135,
        90,
        -90,
        22.5,
        -22.5,
        157.5,
        -157.5,
        67.5,
        -67.5,
        112.5,
        -112.5,
    )
)


def place_labels(
    ax,
    points: Sequence[tuple[float, float]],
    labels: Sequence[str],
    areas: Sequence[float],
    fontsize: float = 8,
    rings: int = 20,
    step: float = 9.0,
    orders_tried: int = 12,
) -> list:
    """Annotates each data point of `ax` with its label, none overlapping.

    Each label has candidate positions: 16 directions at `rings` distances
    `step` points apart, starting just outside its marker (area `areas[i]`
    pt²), each measured with the renderer's actual text extent. A position
    costs its overlap with other labels and markers, the part of it outside
    the axes, and any crossing of a leader line (drawn from a point to a
    label placed beyond the first ring) with a label, a marker or another
    leader. Labels are placed greedily, each at its cheapest position (the
    nearest of equal ones), then any label still in conflict is moved to its
    cheapest position given all the others, a few passes; this is repeated
    for up to `orders_tried` placement orders (most crowded point first,
    sweeps, seeded shuffles) and the cheapest layout kept, the first free
    one as soon as it is found. Call it once the figure's layout is final
    (`tight_layout`, limits, scales): positions are in display space.

    Returns the `Annotation`s, in the order of `points`.

    Example:

    ```python
    fig, ax = plt.subplots()
    ax.scatter([1, 1.01], [90, 90.1], s=[50, 50])
    fig.tight_layout()
    place_labels(ax, [(1, 90), (1.01, 90.1)], ["a", "b"], [50, 50])
    ```
    """
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    to_pixels = fig.dpi / 72.0
    frame = ax.get_window_extent(renderer)
    clearance = 3 * to_pixels
    centers = [tuple(c) for c in ax.transData.transform(points)]
    radii = [(area / math.pi) ** 0.5 for area in areas]  # points
    markers = [
        Bbox.from_extents(
            x - r * to_pixels, y - r * to_pixels, x + r * to_pixels, y + r * to_pixels
        )
        for (x, y), r in zip(centers, radii)
    ]
    candidates = []  # per point: (offset, ha, va, box, leader), nearest first
    for i, (x, y) in enumerate(centers):
        # A text's extent moves with its offset and nothing else: measure it
        # once per alignment, at the point itself, and translate.
        extents = {}
        for _, ha, va in _DIRECTIONS:
            probe = _annotate(ax, labels[i], points[i], (0, 0), ha, va, fontsize)
            extents[ha, va] = probe.get_window_extent(renderer)
            probe.remove()
        options = []
        for ring in range(rings):
            distance = radii[i] + 3 + ring * step
            for (dx, dy), ha, va in _DIRECTIONS:
                offset = (dx * distance, dy * distance)
                shift = (offset[0] * to_pixels, offset[1] * to_pixels)
                box = extents[ha, va].translated(*shift)
                end = (x + shift[0], y + shift[1])
                options.append((offset, ha, va, box, ((x, y), end) if ring else None))
        candidates.append(options)

    chosen: dict[int, tuple] = {}

    def cost(i, option) -> float:
        _, _, _, box, leader = option
        total = box.width * box.height - _overlap(box, frame)
        for j, marker in enumerate(markers):
            if j != i:
                # Kept clear of other markers, not just off them: a label
                # touching a neighbour's marker reads as the neighbour's.
                total += _overlap(box, marker.padded(clearance))
                if leader is not None and _crosses(leader, marker):
                    total += _THROUGH_MARKER
        for j, (_, _, _, other, other_leader) in chosen.items():
            if j == i:
                continue
            total += _overlap(box, other)
            if other_leader is not None and _crosses(other_leader, box):
                total += _CROSSING
            if leader is not None:
                total += _CROSSING * _crosses(leader, other)
                if other_leader is not None:
                    total += _GRAZING * _segments_cross(leader, other_leader)
        return total

    def cheapest(i):
        best, best_cost = None, math.inf
        for option in candidates[i]:
            c = cost(i, option)
            if c < best_cost:
                best, best_cost = option, c
                if c == 0:
                    break
        return best

    def arrange(order) -> float:
        chosen.clear()
        for i in order:
            chosen[i] = cheapest(i)
        for _ in range(5):
            moved = False
            for i in order:
                if cost(i, chosen[i]) > 0:
                    option = cheapest(i)
                    moved |= option is not chosen[i]
                    chosen[i] = option
            if not moved:
                break
        return sum(cost(i, chosen[i]) for i in order)

    # Greedy placement depends on the order: a label placed early can wall
    # a later one in. Try a few orders (the most crowded point first, then
    # sweeps across the plot, then seeded shuffles) and keep the cheapest.
    crowd = [sum(math.dist(c, other) < 60 * to_pixels for other in centers) for c in centers]
    indices = range(len(points))
    orders = [
        sorted(indices, key=lambda i: (-crowd[i], centers[i][0])),
        sorted(indices, key=lambda i: centers[i]),
        sorted(indices, key=lambda i: (-centers[i][0], centers[i][1])),
        sorted(indices, key=lambda i: (-centers[i][1], centers[i][0])),
        sorted(indices, key=lambda i: (centers[i][1], centers[i][0])),
    ]
    shuffler = random.Random(0)
    for _ in range(orders_tried - len(orders)):
        orders.append(shuffler.sample(list(indices), len(points)))
    best_layout, best_total = None, math.inf
    for order in orders[: max(orders_tried, 1)]:
        total = arrange(order)
        if total < best_total:
            best_layout, best_total = dict(chosen), total
        if total == 0:
            break
    chosen = best_layout
    annotations = []
    for i in range(len(points)):
        offset, ha, va, _, leader = chosen[i]
        radius = radii[i] if leader is not None else None
        annotations.append(_annotate(ax, labels[i], points[i], offset, ha, va, fontsize, radius))
    return annotations


# Where an alignment anchors the text, as a fraction of its box.
_RELATIVE = {"left": 0.0, "center": 0.5, "right": 1.0, "bottom": 0.0, "top": 1.0}


def _annotate(ax, text, xy, offset, ha, va, fontsize, leader_from=None):
    """One label `offset` points from `xy`; with `leader_from` (the marker's
    radius in points), a thin line from the marker's edge to the label's
    anchor (the corner or edge nearest the point, as `place_labels` assumes;
    matplotlib's default would aim at the text's centre)."""
    arrow = None
    if leader_from is not None:
        relpos = (_RELATIVE[ha], _RELATIVE[va])
        arrow = {
            "arrowstyle": "-",
            "color": "0.5",
            "lw": 0.6,
            "relpos": relpos,
            "shrinkA": 1,
            "shrinkB": leader_from,
        }
    return ax.annotate(
        text,
        xy,
        xytext=offset,
        textcoords="offset points",
        ha=ha,
        va=va,
        fontsize=fontsize,
        zorder=4,
        arrowprops=arrow,
    )


# Costs in the units of overlap (pixels²). A leader line through a label
# reads as the wrong pair: like a small overlap. One through another marker
# misleads less (the line ends at a label), and two leaders crossing (in a
# tight crowd every way out passes a neighbour) is only a blemish. A free
# position beats all three.
_CROSSING = 50.0
_THROUGH_MARKER = 30.0
_GRAZING = 5.0


def _crosses(line, box) -> bool:
    """Whether the segment `line` meets the `Bbox` `box` (Liang-Barsky clipping)."""
    (x0, y0), (x1, y1) = line
    dx, dy = x1 - x0, y1 - y0
    low, high = 0.0, 1.0
    for p, q in ((-dx, x0 - box.x0), (dx, box.x1 - x0), (-dy, y0 - box.y0), (dy, box.y1 - y0)):
        if p == 0:
            if q < 0:
                return False
            continue
        ratio = q / p
        if p < 0:
            low = max(low, ratio)
        else:
            high = min(high, ratio)
        if low > high:
            return False
    return True


def _segments_cross(a, b) -> bool:
    """Whether two segments properly intersect (orientation test)."""

    def turn(p, q, r):
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])

    (p1, p2), (p3, p4) = a, b
    d1, d2 = turn(p3, p4, p1), turn(p3, p4, p2)
    d3, d4 = turn(p1, p2, p3), turn(p1, p2, p4)
    return d1 * d2 < 0 and d3 * d4 < 0


def _overlap(a, b) -> float:
    """Area (pixels²) shared by two display-space `Bbox`es."""
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(width, 0.0) * max(height, 0.0)


def plot_history(
    history: Any,
    path: str | os.PathLike,
    overwrite: bool = False,
    title: str = "Training curves",
    metrics: Sequence[str] | None = None,
) -> Path:
    """Plots training curves from a `History` or a `{metric: [values]}` dict.

    One panel per metric, holding its training and its `val_` curve. To
    compare runs, pass `{run name: History or dict}`: each panel then holds
    every run's curves, labelled by run. `metrics` chooses the panels and
    their order (default: every metric logged, sorted).

    Example:

    ```python
    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=64)
    student = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)]
    )

    teacher = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    distiller = kd_keras.Distiller(student, teacher)
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    history = distiller.fit(x, y, validation_split=0.1, epochs=2, verbose=0)
    plot_history(history, "out/curves.png")
    ```
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    runs = _runs(history)
    logged = sorted({k[4:] if k.startswith("val_") else k for logs in runs.values() for k in logs})
    if metrics is None:
        metrics = logged
    unknown = [m for m in metrics if m not in logged]
    if unknown or not metrics:
        raise ValueError(
            f"metrics {unknown or list(metrics)} are not in the history; "
            f"it logs {logged}."
        )
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=120, squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for i, (run, logs) in enumerate(runs.items()):
            # One colour per run, so its training and held-out curves pair up.
            color = f"C{i}" if run else None
            for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
                if key in logs:
                    values = list(logs[key])
                    label = f"{run}: {key}" if run else key
                    ax.plot(
                        range(1, len(values) + 1), values, style, markersize=3, label=label,
                        color=color,
                    )
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path, overwrite)


def _runs(history: Any) -> dict[str, Mapping[str, Sequence[float]]]:
    """`{run name: logs}` of one history (its run name empty) or of a
    `{run name: History or dict}` mapping."""
    logs = getattr(history, "history", history)
    if not isinstance(logs, Mapping) or not logs:
        raise ValueError(
            "history must be a keras History, a non-empty {metric: [values]} dict, "
            f"or a {{run name: History}} dict, got {type(history).__name__}."
        )
    runs = {name: getattr(run, "history", run) for name, run in logs.items()}
    if all(isinstance(run, Mapping) and run for run in runs.values()):
        return runs
    return {"": logs}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, overwrite: bool, layout: bool = True) -> Path:
    import matplotlib.pyplot as plt

    if layout:
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return write_bytes(path, buffer.getvalue(), overwrite)
