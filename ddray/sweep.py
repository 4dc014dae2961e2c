"""A sweep without Ray: its runs, and the table, markdown and plot of their results.

``DIR/runs/<name>/`` is one ordinary run per combination of the ``sweep:`` values;
``DIR/sweep.csv`` has one row per *setting* (a combination without its seed): the swept
values except ``seed``, ``n_seeds``, then ``<method>_mean`` and ``<method>_std`` of the test
accuracy for every aggregation method and baseline, then ``<timing>_mean`` of every wall time
of the runs' ``timings_s``. The std is numpy's sample std over the seeds (``ddof=1``); with
one seed it is NaN (an empty CSV cell, no "±" in the markdown): one run says nothing about
the spread. ``ddray/orchestration/sweep.py`` runs it all on one Ray instance.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ddray import combinations
from ddray.config import RunConfig, parse_config

SWEEP_CONFIG = "sweep.yaml"
SWEEP_JSON = "sweep.json"
SWEEP_CSV = "sweep.csv"
SWEEP_MD = "sweep.md"
SWEEP_PNG = "sweep.png"
RUNS = "runs"
GRID = "decomposition.grid"
METHOD_ORDER = ("dnn", "average", "vote", "global", "coherent", "transfer")
WALL_ORDER = ("local_wall", "aggregation_wall", "baselines_wall", "total_wall")


@dataclass(frozen=True)
class SweepRun:
    """One combination: its folder name, its swept values, and the run's own config (no ``sweep:``)."""

    name: str
    setting: dict[str, Any]
    config: RunConfig

    def folder(self, root: str | Path) -> Path:
        return Path(root) / RUNS / self.name


def plan(config: RunConfig) -> list[SweepRun]:
    """Every run of the sweep, in order; the config's validation already checked each combination."""
    if not config.sweep:
        raise ValueError("this config has no sweep: section; run it with ddray run")
    base = config.model_dump(mode="json", exclude={"sweep"})
    settings = combinations.expand(config.sweep)
    names = combinations.run_names(settings)
    return [SweepRun(n, s, parse_config(combinations.apply(base, s))) for n, s in zip(names, settings)]


def setting_keys(config: RunConfig) -> list[str]:
    """The swept keys a table row is made of: all but the seed."""
    return [k for k in (config.sweep or {}) if k != combinations.SEED]


def run_record(results: dict[str, Any]) -> dict[str, float]:
    """Test accuracy of every aggregation method and baseline, and every wall time, of one results.json."""
    out: dict[str, float] = {}
    for section in ("aggregation", "baselines"):
        for method, info in (results.get(section) or {}).items():
            if isinstance(info, dict) and isinstance(info.get("test_accuracy"), (int, float)):
                out[f"acc:{method}"] = float(info["test_accuracy"])
    for name, value in (results.get("timings_s") or {}).items():
        if isinstance(value, (int, float)):
            out[f"wall:{name}"] = float(value)
    return out


def _stats(values: list[float]) -> tuple[float, float]:
    import numpy as np

    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def table(keys: list[str], runs: list[tuple[dict[str, Any], dict[str, Any]]]):
    """The sweep table (a pandas DataFrame), one row per setting in first-seen order.

    ``runs`` holds (setting, results.json) of every finished run; a setting's swept values are
    written as JSON (``[2, 2]``, ``0.001``, ``"adam"``) so the CSV reads back unambiguously.
    """
    import pandas as pd

    groups: dict[str, list[dict[str, float]]] = {}
    values: dict[str, dict[str, Any]] = {}
    for setting, results in runs:
        group = json.dumps([setting.get(k) for k in keys])
        groups.setdefault(group, []).append(run_record(results))
        values.setdefault(group, {k: setting.get(k) for k in keys})
    methods = _ordered({k[4:] for recs in groups.values() for r in recs for k in r if k.startswith("acc:")}, METHOD_ORDER)
    walls = _ordered({k[5:] for recs in groups.values() for r in recs for k in r if k.startswith("wall:")}, WALL_ORDER)
    rows = []
    for group, records in groups.items():
        row: dict[str, Any] = {k: json.dumps(v) for k, v in values[group].items()}
        row["n_seeds"] = len(records)
        for method in methods:
            row[f"{method}_mean"], row[f"{method}_std"] = _stats([r[f"acc:{method}"] for r in records if f"acc:{method}" in r])
        for wall in walls:
            row[f"{wall}_mean"] = _stats([r[f"wall:{wall}"] for r in records if f"wall:{wall}" in r])[0]
        rows.append(row)
    columns = [*keys, "n_seeds", *(f"{m}_{s}" for m in methods for s in ("mean", "std")), *(f"{w}_mean" for w in walls)]
    return pd.DataFrame(rows, columns=columns)


def _ordered(names: set[str], first: tuple[str, ...]) -> list[str]:
    return [n for n in first if n in names] + sorted(names - set(first))


def methods_of(frame) -> list[str]:
    return [c[: -len("_mean")] for c in frame.columns if c.endswith("_mean") and f"{c[: -len('_mean')]}_std" in frame.columns]


def _pm(mean: Any, std: Any) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {std:.4f}"


def markdown(frame, keys: list[str]) -> str:
    """The table as markdown: swept values, n_seeds, test accuracy mean ± std per method, mean walls (s)."""
    methods = methods_of(frame)
    walls = [c for c in frame.columns if c.endswith("_mean") and c[: -len("_mean")] not in methods]
    header = [*keys, "n_seeds", *methods, *(f"{w[: -len('_mean')]} (s)" for w in walls)]
    lines = [
        "Test accuracy, mean ± std over seeds (numpy std, ddof=1; no ± with one seed); walls are means in seconds.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in frame.to_dict("records"):
        cells = [str(row[k]) for k in keys] + [str(row["n_seeds"])]
        cells += [_pm(row[f"{m}_mean"], row[f"{m}_std"]) for m in methods]
        cells += ["" if math.isnan(row[w]) else f"{row[w]:.1f}" for w in walls]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def x_axis(frame, keys: list[str], base_grid: list[int]) -> tuple[str, list[float], list[str]]:
    """(label, x value, tick label) per row: subdomains from ``decomposition.grid`` when it is swept
    (else the first swept key: its numbers, or positions of its values), the base grid's subdomains
    when only the seed is."""
    if GRID in keys or not keys:
        grids = [json.loads(v) for v in frame[GRID]] if GRID in keys else [base_grid] * len(frame)
        xs = [float(math.prod(g)) for g in grids]
        return "number of subdomains", xs, [f"{int(x)} ({'x'.join(map(str, g))})" for x, g in zip(xs, grids)]
    key = keys[0]
    parsed = [json.loads(v) for v in frame[key]]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in parsed):
        return key, [float(v) for v in parsed], [str(v) for v in parsed]
    order = list(dict.fromkeys(json.dumps(v) for v in parsed))
    return key, [float(order.index(json.dumps(v))) for v in parsed], [str(v) for v in parsed]


def plot(frame, keys: list[str], base_grid: list[int], path: Path) -> None:
    """Mean test accuracy against the x axis of :func:`x_axis`, std error bars, one line per method
    (per method and value of the other swept keys, when there are more)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label, xs, ticks = x_axis(frame, keys, base_grid)
    x_key = GRID if (GRID in keys or not keys) else keys[0]
    others = [k for k in keys if k != x_key]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = frame.to_dict("records")
    log_x = label == "number of subdomains" and min(xs, default=0) > 0 and len(set(xs)) > 1
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for method in methods_of(frame):
        for x, row in zip(xs, rows):
            tag = method + (" (" + ", ".join(f"{k}={row[k]}" for k in others) + ")" if others else "")
            std = row[f"{method}_std"]
            lines.setdefault(tag, []).append((x, row[f"{method}_mean"], 0.0 if math.isnan(std) else std))
    for i, (tag, points) in enumerate(lines.items()):
        points.sort()
        shift = 0.04 * (i - (len(lines) - 1) / 2)  # side by side, so error bars of equal x do not hide each other
        px = [p[0] * 2**shift if log_x else p[0] for p in points]
        ax.errorbar(px, [p[1] for p in points], yerr=[p[2] for p in points], marker="o", capsize=4, label=tag)
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(xs)), [ticks[xs.index(x)] for x in sorted(set(xs))])
    ax.minorticks_off()
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_title("ddray sweep")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_reports(config: RunConfig, runs: list[tuple[dict[str, Any], dict[str, Any]]], out_dir: Path):
    """sweep.csv, sweep.md and sweep.png of the finished runs; returns the table."""
    keys = setting_keys(config)
    frame = table(keys, runs)
    frame.to_csv(out_dir / SWEEP_CSV, index=False)
    (out_dir / SWEEP_MD).write_text(markdown(frame, keys))
    if len(frame):
        plot(frame, keys, config.decomposition.grid, out_dir / SWEEP_PNG)
    return frame


def records(frame) -> list[dict[str, Any]]:
    """The table as JSON rows (NaN as null)."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


def print_table(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """The table on the terminal: swept values, n_seeds, mean ± std per method."""
    console = console or Console()
    if not rows:
        console.print("no finished runs")
        return
    columns = list(rows[0])
    methods = [c[: -len("_mean")] for c in columns if c.endswith("_mean") and f"{c[: -len('_mean')]}_std" in columns]
    keys = columns[: columns.index("n_seeds")]
    out = Table(title="ddray sweep (test accuracy, mean ± std over seeds)")
    for col in [*keys, "n_seeds", *methods]:
        out.add_column(col, justify="left" if col in keys else "right")
    for row in rows:
        out.add_row(*(str(row[k]) for k in keys), str(row["n_seeds"]), *(_pm(row[f"{m}_mean"], row[f"{m}_std"]) for m in methods))
    console.print(out)
