"""What a finished run leaves behind: results.json, a table, and a plot."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS_FILE = "results.json"
PLOT_FILE = "accuracy.png"
TABLE_MD = "results.md"
TABLE_CSV = "results.csv"


def library_versions() -> dict[str, str]:
    import numpy
    import pandas
    import pydantic
    import torch
    import torchvision

    import ddray

    versions = {
        "ddray": ddray.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "pydantic": pydantic.__version__,
    }
    try:
        import ray

        versions["ray"] = ray.__version__
    except ImportError:  # pragma: no cover - ray is a dependency
        pass
    return versions


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def comparison_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model: each local CNN, each aggregation, each baseline."""
    rows = []
    for entry in results.get("local", []):
        rows.append(
            {
                "model": f"local {entry['subdomain']}",
                "kind": "local",
                "test_accuracy": entry["test_accuracy"],
                "parameters": entry.get("parameters"),
                "train_wall_s": entry.get("train_seconds"),
            }
        )
    for method, info in results.get("aggregation", {}).items():
        rows.append(
            {
                "model": method,
                "kind": "aggregation",
                "test_accuracy": info["test_accuracy"],
                "parameters": info.get("parameters"),
                "train_wall_s": info.get("train_wall_s"),
            }
        )
    for name, info in results.get("baselines", {}).items():
        rows.append(
            {
                "model": name,
                "kind": "baseline",
                "test_accuracy": info["test_accuracy"],
                "parameters": info.get("parameters"),
                "train_wall_s": info.get("train_wall_s"),
            }
        )
    return rows


def write_tables(results: dict[str, Any], out_dir: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame(comparison_rows(results))
    frame.to_csv(out_dir / TABLE_CSV, index=False)
    lines = ["| model | kind | test accuracy | parameters | train wall (s) |", "|---|---|---|---|---|"]
    for row in frame.to_dict("records"):
        params = "" if row.get("parameters") is None or row["parameters"] != row["parameters"] else f"{int(row['parameters']):,}"
        wall = "" if row.get("train_wall_s") is None or row["train_wall_s"] != row["train_wall_s"] else f"{row['train_wall_s']:.1f}"
        lines.append(f"| {row['model']} | {row['kind']} | {row['test_accuracy']:.4f} | {params} | {wall} |")
    timings = results.get("timings_s", {})
    if timings:
        lines += ["", "| timing | seconds |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    (out_dir / TABLE_MD).write_text("\n".join(lines) + "\n")


def print_table(results: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="ddray results (test accuracy)")
    for col in ("model", "kind", "test accuracy", "parameters", "train wall (s)"):
        table.add_column(col, justify="right" if col != "model" and col != "kind" else "left")
    for row in comparison_rows(results):
        params = row.get("parameters")
        wall = row.get("train_wall_s")
        style = "bold green" if row["kind"] != "local" else None
        table.add_row(
            row["model"],
            row["kind"],
            f"{row['test_accuracy']:.4f}",
            f"{params:,}" if params else "",
            f"{wall:.1f}" if wall is not None else "",
            style=style,
        )
    console.print(table)
    timings = results.get("timings_s", {})
    if timings:
        console.print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))


def plot_accuracy(results: dict[str, Any], path: Path) -> None:
    """Bar chart: every local CNN, then the aggregations and baselines, on one accuracy axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = comparison_rows(results)
    colors = {"local": "#9bb7d4", "aggregation": "#2a6f97", "baseline": "#e07a5f"}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(rows) + 2), 4.0))
    names = [r["model"] for r in rows]
    values = [r["test_accuracy"] for r in rows]
    bars = ax.bar(names, values, color=[colors[r["kind"]] for r in rows])
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, value + 0.01, f"{value:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("test accuracy")
    grid = results.get("config", {}).get("decomposition", {}).get("grid")
    ax.set_title(f"local CNNs vs aggregated decision (grid {grid})")
    ax.tick_params(axis="x", rotation=45)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for k, c in colors.items() if any(r["kind"] == k for r in rows)]
    labels = [k for k in colors if any(r["kind"] == k for r in rows)]
    ax.legend(handles, labels, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
