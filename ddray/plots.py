"""Every picture a run leaves behind, drawn with matplotlib (Agg, imported only when drawing).

- ``accuracy.png``: test accuracy (and time to model) of every model (:func:`plot_accuracy`).
- ``learning_curves.png``: validation accuracy and training loss per epoch of each local CNN
  (thin lines and their median), the DNN and the baselines (:func:`plot_learning_curves`).
- ``confusion_matrix.png``: the DNN on the test set (:func:`plot_confusion`).
- ``subdomain_accuracy.png``: each local CNN's test accuracy laid over the decomposition grid,
  one panel per depth slice of a 3D grid (:func:`plot_subdomain_accuracy`).
- ``tune_allocation.png``: with a Tune search, each subdomain's best validation accuracy and the
  trials it got, over the grid (:func:`plot_tune_allocation`).
- ``stream.png``: with ``aggregation.streaming``, the streamed global accuracy against time, each local CNN's
  finishing time marked (:func:`plot_stream`).

The arranging functions (:func:`grid_values`, :func:`confusion_matrix`, :func:`median_curve`)
are pure numpy, so tests check where values go without reading pixels.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

ACCURACY_PNG = "accuracy.png"
LEARNING_CURVES_PNG = "learning_curves.png"
CONFUSION_PNG = "confusion_matrix.png"
SUBDOMAIN_PNG = "subdomain_accuracy.png"
TUNE_PNG = "tune_allocation.png"
STREAM_PNG = "stream.png"
KIND_COLORS = {"local": "#9bb7d4", "aggregation": "#2a6f97", "baseline": "#e07a5f"}
BASELINE_COLORS = {"global": "#e07a5f", "coherent": "#81b29a", "transfer": "#9c6ade"}

log = logging.getLogger(__name__)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def warm_up() -> None:
    """Import matplotlib now (0.4 s): a run's driver does this while its workers train, so the pictures
    drawn at the run's end wait for no import."""
    _pyplot()


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


# ------------------------------------------------------------------ pure arrangements


def grid_values(values: Mapping[int, float], grid: Sequence[int]) -> np.ndarray:
    """Per-subdomain values placed on the decomposition grid: shape ``grid``, NaN where a subdomain has none.

    Subdomain ``i`` sits at ``np.unravel_index(i, grid)``: the row-major order of
    :func:`ddray.decomposition.decompose` (2D: [row, col]; 3D: [depth, row, col]).
    """
    out = np.full(tuple(int(g) for g in grid), np.nan)
    for index, value in values.items():
        out[np.unravel_index(int(index), out.shape)] = np.nan if value is None else float(value)
    return out


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(true class, predicted class) counts, shape (K, K) int64."""
    out = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(out, (np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return out


def median_curve(curves: Sequence[Sequence[float]]) -> np.ndarray:
    """Per-epoch median over curves of possibly different lengths (NaN ignored; longest length)."""
    length = max((len(c) for c in curves), default=0)
    padded = np.full((len(curves), length), np.nan)
    for row, curve in zip(padded, curves):
        row[: len(curve)] = np.asarray(curve, dtype=float)
    if not length:
        return np.empty(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an epoch no curve reached: NaN, said once here
        return np.nanmedian(padded, axis=0)


def stream_series(results: Mapping[str, Any]) -> dict[str, list[float]]:
    """The stream's points (seconds, test and validation accuracy, subdomains done) and the local CNNs' finishing
    times (seconds into the local phase, sorted), from results.json."""
    stream = (results.get("aggregation") or {}).get("stream") or []
    out: dict[str, list[float]] = {key: [] for key in ("seconds", "test", "val", "done", "finished")}
    for entry in stream:
        out["seconds"].append(float(entry["seconds"]))
        out["test"].append(np.nan if entry.get("test_accuracy") is None else float(entry["test_accuracy"]))
        out["val"].append(np.nan if entry.get("validation_accuracy") is None else float(entry["validation_accuracy"]))
        out["done"].append(int(entry["subdomains_done"]))
    out["finished"] = sorted(float(e["finished_s"]) for e in results.get("local", []) if e.get("finished_s") is not None)
    return out


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(int(m.get("epoch", i + 1)), float(m[key])) for i, m in enumerate(history) if m.get(key) is not None]
    return [e for e, _ in points], [v for _, v in points]


# ------------------------------------------------------------------ pictures


def plot_accuracy(results: dict[str, Any], rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Bar charts: test accuracy of every model and, when known, its time to model (with speed-up vs global);
    ``rows`` are :func:`ddray.report.comparison_rows` of ``results``."""
    plt = _pyplot()
    names = [r["model"] for r in rows]
    timed = [r for r in rows if r.get("time_to_model_s")]
    panels = 2 if timed else 1
    width = max(6.0, 0.6 * len(rows) + 2)
    fig, axes = plt.subplots(1, panels, figsize=(width * panels, 4.2), squeeze=False)
    ax = axes[0][0]
    values = [r["test_accuracy"] for r in rows]
    bars = ax.bar(names, values, color=[KIND_COLORS[r["kind"]] for r in rows])
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, value + 0.01, f"{value:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("test accuracy")
    grid = results.get("config", {}).get("decomposition", {}).get("grid")
    suffix = " vs baselines" if results.get("baselines") else ""
    ax.set_title(f"local CNNs vs aggregated decision{suffix} (grid {grid})")
    ax.tick_params(axis="x", rotation=45)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for k, c in KIND_COLORS.items() if any(r["kind"] == k for r in rows)]
    labels = [k for k in KIND_COLORS if any(r["kind"] == k for r in rows)]
    ax.legend(handles, labels, loc="lower right")
    if timed:
        ax = axes[0][1]
        t_names = [r["model"] for r in timed]
        t_values = [r["time_to_model_s"] for r in timed]
        bars = ax.bar(t_names, t_values, color=[KIND_COLORS[r["kind"]] for r in timed])
        for bar, row in zip(bars, timed):
            label = f"{row['time_to_model_s']:.1f}s"
            if row.get("speedup_vs_global"):
                label += f"\n{row['speedup_vs_global']:.2f}x"
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), label, ha="center", va="bottom", fontsize=7)
        ax.set_ylabel("time to model (s)")
        comparison = results.get("comparison") or {}
        title = "training wall time (label: speed-up vs global)"
        if comparison.get("speedup"):
            title += f"; decomposed pipeline: {comparison['speedup']:.2f}x"
        ax.set_title(title)
        ax.set_ylim(0, max(t_values) * 1.25)
        ax.tick_params(axis="x", rotation=45)
    _save(fig, path)


def plot_learning_curves(histories: Mapping[str, Any], path: Path) -> None:
    """Validation accuracy and training loss per epoch: every local CNN as a thin line plus their median
    (readable with 64 subdomains), the DNN and each baseline as a line of its own.

    ``histories`` is ``{"local": {index: history}, "dnn": history, "baselines": {name: history}}``
    (a history: the per-epoch metric dicts of :func:`ddray.training.loop.fit`).
    """
    plt = _pyplot()
    local = histories.get("local") or {}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for ax, key, label in ((axes[0], "val_accuracy", "validation accuracy"), (axes[1], "train_loss", "training loss")):
        curves = []
        for history in local.values():
            epochs, values = _series(history, key)
            if values:
                ax.plot(epochs, values, color=KIND_COLORS["local"], linewidth=0.7, alpha=0.45)
                curves.append(dict(zip(epochs, values)))
        if curves:
            last = max(max(c) for c in curves)
            median = median_curve([[c.get(e, np.nan) for e in range(1, last + 1)] for c in curves])
            ax.plot(range(1, last + 1), median, color="#1d4e89", linewidth=2.2, label=f"local CNNs: median of {len(curves)}")
        epochs, values = _series(histories.get("dnn") or [], key)
        if values:
            ax.plot(epochs, values, color=KIND_COLORS["aggregation"], linewidth=2.0, linestyle="--", marker=".", label="DNN")
        for name, history in (histories.get("baselines") or {}).items():
            epochs, values = _series(history, key)
            if values:
                ax.plot(epochs, values, color=BASELINE_COLORS.get(name), linewidth=1.8, marker=".", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per epoch")
        if key == "val_accuracy":
            ax.set_ylim(0, 1.02)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right" if key == "val_accuracy" else "upper right", fontsize=8)
        ax.grid(alpha=0.3)
    _save(fig, path)


def plot_confusion(matrix: np.ndarray, path: Path, class_names: Sequence[str] = (), title: str = "DNN on the test set") -> None:
    """Rows: true class, columns: predicted; colour is the row's share, the cell text its count (up to 20 classes)."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    k = len(matrix)
    names = [str(n) for n in class_names] if len(class_names) == k else [str(i) for i in range(k)]
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    size = min(14.0, max(4.5, 0.45 * k + 2.5))
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if k <= 20:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, str(int(count)), ha="center", va="center", fontsize=8, color="white" if share[i, j] > 0.5 else "black")
    if k <= 40:
        ax.set_xticks(range(k), names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right" if max(map(len, names)) > 3 else "center", fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
    correct = int(np.trace(matrix))
    total = int(matrix.sum())
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}: {correct}/{total} correct ({correct / total:.3f})" if total else title)
    _save(fig, path)


def plot_subdomain_accuracy(results: dict[str, Any], path: Path) -> None:
    """Heat map of each local CNN's test accuracy over the decomposition grid, the value written in its
    cell; cells span the subdomains' core pixels (overlap not drawn). A 3D grid gets one panel per depth slice."""
    plt = _pyplot()
    grid = [int(g) for g in (results.get("decomposition") or {}).get("grid") or results["config"]["decomposition"]["grid"]]
    values = grid_values({int(e["subdomain"]): e.get("test_accuracy") for e in results.get("local", [])}, grid)
    shape = (results.get("dataset") or {}).get("spatial_shape") or grid
    rows, cols = grid[-2:]
    height, width = shape[-2:]
    y_edges = [(i * height) // rows for i in range(rows + 1)]
    x_edges = [(j * width) // cols for j in range(cols + 1)]
    slices = values.reshape(-1, rows, cols)
    panels = len(slices)
    per_row = min(panels, 4)
    lines = -(-panels // per_row)
    cell = max(3.2, min(6.0, 0.55 * max(rows, cols) + 2.0))
    fig, axes = plt.subplots(lines, per_row, figsize=(cell * per_row + 1.2, cell * lines), squeeze=False)
    finite = values[np.isfinite(values)]
    vmin = float(min(finite.min(), 0.5)) if finite.size else 0.0
    mesh = None
    for n, ax in enumerate(axes.flat):
        if n >= panels:
            ax.axis("off")
            continue
        mesh = ax.pcolormesh(x_edges, y_edges, np.ma.masked_invalid(slices[n]), cmap="viridis", vmin=vmin, vmax=1.0, edgecolors="white", linewidth=1)
        font = 9 if max(rows, cols) <= 6 else 7 if max(rows, cols) <= 10 else 5
        for (i, j), value in np.ndenumerate(slices[n]):
            text = "n/a" if not np.isfinite(value) else f"{value:.2f}"
            dark = np.isfinite(value) and value < vmin + 0.6 * (1.0 - vmin)
            ax.text((x_edges[j] + x_edges[j + 1]) / 2, (y_edges[i] + y_edges[i + 1]) / 2, text, ha="center", va="center",
                    fontsize=font, color="white" if dark else "black")
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)  # row 0 at the top, as in the image
        ax.set_aspect("equal")
        ax.set_xlabel("width (px)")
        if n % per_row == 0:
            ax.set_ylabel("height (px)")
        ax.set_title(f"depth slice {n}" if len(grid) == 3 else f"grid {grid}")
    if mesh is not None:
        fig.colorbar(mesh, ax=axes.ravel().tolist(), label="local CNN test accuracy", shrink=0.8)
    fig.suptitle("test accuracy of each subdomain's CNN: which regions carry the information", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def tune_grids(results: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(best validation accuracy, trials) of each subdomain's search, on the grid flattened to 2D (depth slices side by side)."""
    grid = [int(g) for g in (results.get("decomposition") or {}).get("grid") or results["config"]["decomposition"]["grid"]]
    tune = results.get("tune") or {}
    best = grid_values({int(e["subdomain"]): e.get("validation_accuracy") for e in tune.get("best", [])}, grid)
    trials = grid_values(dict(enumerate(tune.get("trials_per_subdomain") or [])), grid)
    flat = lambda a: np.concatenate(list(a.reshape(-1, grid[-2], grid[-1])), axis=1)  # noqa: E731
    return flat(best), flat(trials)


def plot_tune_allocation(results: dict[str, Any], path: Path) -> None:
    """Two heat maps over the grid: best validation accuracy of each subdomain's trials, and how many trials it got."""
    plt = _pyplot()
    best, trials = tune_grids(results)
    tune = results.get("tune") or {}
    fig, axes = plt.subplots(1, 2, figsize=(4.0 + 0.6 * best.shape[1] * 2, 1.5 + 0.6 * best.shape[0]), squeeze=False)
    for ax, values, title, fmt, cmap in ((axes[0, 0], best, "best validation accuracy", "{:.2f}", "viridis"),
                                         (axes[0, 1], trials, "trials", "{:.0f}", "magma")):
        mesh = ax.imshow(np.ma.masked_invalid(values), cmap=cmap)
        low, high = mesh.get_clim()
        for (i, j), v in np.ndenumerate(values):
            bright = np.isfinite(v) and high > low and (v - low) / (high - low) > 0.6
            ax.text(j, i, "n/a" if not np.isfinite(v) else fmt.format(v), ha="center", va="center", fontsize=8,
                    color="black" if bright else "white")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=9)
        fig.colorbar(mesh, ax=ax, shrink=0.8)
    fig.suptitle(f"Tune search per subdomain ({tune.get('allocation', 'uniform')} allocation, "
                 f"{int(np.nansum(trials))} trials)", fontsize=10)
    _save(fig, path)


def plot_stream(results: Mapping[str, Any], path: Path) -> None:
    """Global accuracy against time while the local phase runs (a step per refit, labelled with the subdomains
    it had), the local CNNs' finishing times as ticks, and the other aggregations' final accuracies for scale."""
    plt = _pyplot()
    series = stream_series(results)
    fig, ax = plt.subplots(figsize=(8.5, 4.4))
    ax.step(series["seconds"], series["test"], where="post", color=KIND_COLORS["aggregation"], marker="o", label="streamed DNN: test")
    ax.step(series["seconds"], series["val"], where="post", color="#7fb7be", marker=".", linestyle="--", label="streamed DNN: validation")
    for x, y, done in zip(series["seconds"], series["test"], series["done"]):
        if np.isfinite(y):
            ax.annotate(str(done), (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    if series["finished"]:  # a rug along the bottom: one tick per finished local CNN
        ax.vlines(series["finished"], 0, 0.06, color="#1d4e89", linewidth=1.2, label="a local CNN finished")
    others = {m: v.get("test_accuracy") for m, v in (results.get("aggregation") or {}).items() if isinstance(v, dict) and m != "dnn"}
    styles = {"average": ("#555555", ":"), "vote": ("#555555", "-."), "multilevel": ("#e07a5f", "--")}
    for method, value in others.items():
        if value is not None:
            color, style = styles.get(method, ("#999999", ":"))
            ax.axhline(value, color=color, linestyle=style, linewidth=1, label=f"{method} (final) {value:.3f}")
    ax.set_xlabel("seconds into the local phase")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("global accuracy as subdomains finish (label: subdomains done; the others at the class prior)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 0.08), fontsize=7)  # above the rug
    _save(fig, path)


def write_pictures(
    results: dict[str, Any],
    out_dir: Path,
    histories: Mapping[str, Any] | None = None,
    confusion: np.ndarray | None = None,
) -> list[Path]:
    """learning_curves.png (when any history is known), confusion_matrix.png (when the DNN's is given),
    subdomain_accuracy.png and stream.png (with a stream); the paths written. These are diagnostics, never a reason to lose a trained
    run: a picture that fails is a logged warning, and the others are still drawn."""
    todo = []
    if histories and any(histories.get(k) for k in ("local", "dnn", "baselines")):
        todo.append((LEARNING_CURVES_PNG, lambda path: plot_learning_curves(histories, path)))
    if confusion is not None:
        names = (results.get("dataset") or {}).get("class_names") or ()
        todo.append((CONFUSION_PNG, lambda path: plot_confusion(confusion, path, names)))
    if results.get("local"):
        todo.append((SUBDOMAIN_PNG, lambda path: plot_subdomain_accuracy(results, path)))
    if (results.get("tune") or {}).get("trials_per_subdomain"):
        todo.append((TUNE_PNG, lambda path: plot_tune_allocation(results, path)))
    if (results.get("aggregation") or {}).get("stream"):
        todo.append((STREAM_PNG, lambda path: plot_stream(results, path)))
    written = []
    for name, draw in todo:
        try:
            draw(out_dir / name)
            written.append(out_dir / name)
        except Exception as err:  # noqa: BLE001 - see above
            log.warning("ddray: drawing %s failed (%s: %s); the run goes on without it", name, type(err).__name__, err)
    return written
