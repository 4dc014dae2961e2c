"""What a finished run leaves behind: results.json, tables, and the pictures of :mod:`ddray.plots`."""

from __future__ import annotations

import csv
import platform
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from rich.console import Console
from rich.table import Table

from ddray import plots

if TYPE_CHECKING:
    from ddray.tracking import Tracking

RESULTS_FILE = "results.json"
PLOT_FILE = plots.ACCURACY_PNG
TABLE_MD = "results.md"
TABLE_CSV = "results.csv"


def write_reports(
    results: dict[str, Any], out_dir: Path, histories: Mapping[str, Any] | None = None, confusion: np.ndarray | None = None
) -> None:
    """The tables (results.md, results.csv) and pictures of a run whose results.json is written.

    The tables and accuracy.png are the run's summary: failing to write them fails the run. The
    diagnostic pictures (learning curves from ``histories``, the DNN's ``confusion`` matrix, the
    per-subdomain heat map; :func:`ddray.plots.write_pictures`) only warn when they fail.
    """
    write_tables(results, out_dir)
    plots.plot_accuracy(results, comparison_rows(results), out_dir / PLOT_FILE)
    plots.write_pictures(results, out_dir, histories, confusion)  # with a stream: stream.png


def write_in_background(results: dict[str, Any], out_dir: Path, tracking: "Tracking | None" = None) -> Future:
    """:func:`write_reports` in a thread (pandas and matplotlib take a second or two to import and draw),
    then ``tracking.finish`` (final metrics and the pictures to MLflow); the caller goes on (shutting
    Ray down) and waits on the returned future before it is done."""

    def work() -> None:
        if tracking is None:
            write_reports(results, out_dir)
            return
        try:
            write_reports(results, out_dir, tracking.histories, tracking.confusion)
        except BaseException:
            tracking.close("FAILED")
            raise
        tracking.finish(results, out_dir)

    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ddray-report")
    future = executor.submit(work)
    executor.shutdown(wait=False)
    return future


def library_versions() -> dict[str, str]:
    """Installed versions from package metadata: the core stays free of Ray imports."""
    from importlib.metadata import PackageNotFoundError, version

    import ddray

    versions = {"ddray": ddray.__version__, "python": platform.python_version()}
    for name in ("torch", "torchvision", "numpy", "pandas", "pydantic", "ray"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:  # pragma: no cover - all are dependencies
            pass
    return versions


def _num(value: Any) -> float | None:
    """A finite float, or None (missing, NaN)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value == value else None


def comparison_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model: each local CNN, each aggregation, each baseline.

    ``parameters`` / ``train_wall_s`` are the model's own; ``total_parameters``
    and ``time_to_model_s`` count everything the decision needs (the DNN needs
    every local CNN, transfer learning needs the trained CNNs and DNN first),
    and ``speedup_vs_global`` is the global model's training time over
    ``time_to_model_s``. Local CNNs train in parallel, so the decomposed
    models' times start from the local phase's wall time, not the sum.
    """
    timings = results.get("timings_s", {})
    local_wall = _num(timings.get("local_wall"))
    local_params = sum(int(e.get("parameters") or 0) for e in results.get("local", []))
    aggregation = results.get("aggregation", {})
    baselines = results.get("baselines", {})
    dnn_wall = _num(aggregation.get("dnn", {}).get("train_wall_s")) or 0.0
    dnn_params = int(aggregation.get("dnn", {}).get("parameters") or 0)
    global_wall = _num(baselines.get("global", {}).get("train_wall_s"))

    def add(rows: list, model: str, kind: str, info: dict, total_params: int | None, time_to_model: float | None) -> None:
        speedup = None
        if global_wall is not None and time_to_model:
            speedup = round(global_wall / time_to_model, 3)
        rows.append(
            {
                "model": model,
                "kind": kind,
                "test_accuracy": info["test_accuracy"],
                "parameters": info.get("parameters"),
                "total_parameters": total_params,
                "train_wall_s": info.get("train_wall_s", info.get("train_seconds")),
                "time_to_model_s": None if time_to_model is None else round(time_to_model, 3),
                "speedup_vs_global": speedup,
            }
        )

    rows: list[dict[str, Any]] = []
    for entry in results.get("local", []):
        add(rows, f"local {entry['subdomain']}", "local", entry, entry.get("parameters"), _num(entry.get("train_seconds")))
    n_local = len(results.get("local", []))
    for method, info in aggregation.items():
        if method == "stream":  # the first streamed answer (the last one is the dnn row)
            first = stream_milestones(info).get("first")
            if first and first["subdomains_done"] < n_local:
                add(rows, f"dnn streamed {first['subdomains_done']}/{n_local}", "aggregation",
                    {"test_accuracy": first["test_accuracy"], "parameters": dnn_params}, local_params + dnn_params, first["seconds"])
        elif method == "dnn":
            ttm = None if local_wall is None else local_wall + dnn_wall
            add(rows, method, "aggregation", info, local_params + dnn_params, ttm)
        elif method == "multilevel":
            ttm = None if local_wall is None else local_wall + (_num(info.get("train_wall_s")) or 0.0)
            add(rows, method, "aggregation", info, local_params + int(info.get("parameters") or 0), ttm)
        else:
            add(rows, method, "aggregation", info, local_params, local_wall)
    for name, info in baselines.items():
        own = _num(info.get("train_wall_s"))
        if name == "transfer":
            ttm = None if local_wall is None or own is None else local_wall + dnn_wall + own
        else:
            ttm = own
        add(rows, name, "baseline", info, info.get("parameters"), ttm)
    return rows


def stream_milestones(stream: list[dict[str, Any]] | None, tolerance: float = 0.01) -> dict[str, Any]:
    """Of ``aggregation.stream``: the first global answer, the first within ``tolerance`` (1 point) of the
    final test accuracy, and the final one (entries; empty without a stream)."""
    entries = [e for e in stream or [] if _num(e.get("test_accuracy")) is not None]
    if not entries:
        return {}
    final = entries[-1]
    close = next(e for e in entries if e["test_accuracy"] >= final["test_accuracy"] - tolerance - 1e-12)
    return {"first": entries[0], "within_1_point": close, "final": final}


def comparison_summary(results: dict[str, Any]) -> dict[str, Any]:
    """Speed-up of the decomposed pipeline (local phase + aggregation) over the global model's training."""
    timings = results.get("timings_s", {})
    decomposed = (_num(timings.get("local_wall")) or 0.0) + (_num(timings.get("aggregation_wall")) or 0.0)
    global_info = results.get("baselines", {}).get("global", {})
    global_wall = _num(global_info.get("train_wall_s"))
    local_fit = [_num(e.get("train_seconds")) for e in results.get("local", [])]
    dnn = results.get("aggregation", {}).get("dnn", {})
    compute = max([t for t in local_fit if t is not None], default=0.0) + (_num(dnn.get("fit_seconds")) or 0.0)
    out: dict[str, Any] = {
        "decomposed_wall_s": round(decomposed, 3),
        "decomposed_compute_s": round(compute, 3),
        "global_train_wall_s": global_wall,
        "global_job_wall_s": _num(global_info.get("job_wall_s")),
        "speedup": round(global_wall / decomposed, 3) if global_wall and decomposed else None,
        "speedup_compute": round(global_wall / compute, 3) if global_wall and compute else None,
        "definition": "speedup = global train_wall_s (its Ray Train loop; start-up excluded) / decomposed_wall_s "
        "(local phase + aggregation, worker start-up included); speedup_compute = the same over "
        "decomposed_compute_s (slowest local training + DNN fit: local CNNs fully parallel, no start-up)",
    }
    if results.get("tune"):
        out["note"] = "the local phase includes the whole Tune search"
    return out


def notes(results: dict[str, Any]) -> list[str]:
    """Sentences the table cannot say: model sizes against the global model, how the DNN was fitted,
    where transfer learning started."""
    out = []
    params = results.get("parameters") or {}
    if _num(params.get("local_to_global")) is not None:
        width = f"width {params.get('local_width')}" + (" (auto: 1/sqrt(subdomains))" if params.get("width_auto") else "")
        out.append(
            f"The local CNNs ({width}) have {int(params['local_total']):,} parameters together: "
            f"{params['local_to_global']:.2f}x the global model's {int(params['global_model']):,}."
        )
    dnn = (results.get("aggregation") or {}).get("dnn") or {}
    if dnn.get("fit_on") == "val":
        out.append(
            f"The DNN was fitted on held-out validation probabilities ({dnn.get('fit_samples')} samples; "
            f"epoch chosen on {dnn.get('selection_samples')} others), not on the training set's."
        )
    marks = stream_milestones((results.get("aggregation") or {}).get("stream"))
    if marks:
        first, close, final = marks["first"], marks["within_1_point"], marks["final"]
        out.append(
            f"Streaming: a first global answer ({first['test_accuracy']:.4f}, DNN on {first['subdomains_done']} subdomains, "
            f"the others at the class prior) {first['seconds']:.1f} s into the local phase; within 1 point of the final "
            f"{final['test_accuracy']:.4f} at {close['seconds']:.1f} s ({close['subdomains_done']} subdomains); final at {final['seconds']:.1f} s."
        )
    multi = (results.get("aggregation") or {}).get("multilevel") or {}
    if multi:
        regions = ", ".join(f"{r['region']}: {r['test_accuracy']:.3f}" for r in multi.get("regions", []) if r.get("level") == 1)
        out.append(
            f"Multilevel coarse net (regions {multi.get('levels')}): {int(multi.get('parameters') or 0):,} parameters in all its DNNs "
            f"(the largest {int(multi.get('largest_coarse_parameters') or 0):,}) vs the flat DNN's {int(multi.get('flat_dnn_parameters') or 0):,}; "
            f"test accuracy of each first-level region's DNN: {regions}."
        )
    transfer = (results.get("baselines") or {}).get("transfer") or {}
    if _num(transfer.get("start_test_accuracy")) is not None:
        init = "local CNNs and trained DNN" if transfer.get("transfer_init") == "locals_and_dnn" else "local CNNs, fresh DNN"
        out.append(
            f"Transfer learning started ({init}) at test accuracy {transfer['start_test_accuracy']:.4f} "
            f"and reached {transfer['test_accuracy']:.4f} after fine-tuning."
        )
    return out


def _fmt(value: Any, spec: str) -> str:
    value = _num(value)
    return "" if value is None else format(value, spec)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Rows as CSV, columns in order of first appearance, missing and NaN values empty (the standard library's
    writer: importing pandas for this took 0.7 s of every run's end)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if isinstance(v, float) and v != v else v for k, v in row.items()})


def write_tables(results: dict[str, Any], out_dir: Path) -> None:
    rows = comparison_rows(results)
    write_csv(rows, out_dir / TABLE_CSV)
    lines = [
        "| model | kind | test accuracy | parameters | total parameters | train wall (s) | time to model (s) | speedup vs global |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        params = "" if _num(row.get("parameters")) is None else f"{int(row['parameters']):,}"
        total = "" if _num(row.get("total_parameters")) is None else f"{int(row['total_parameters']):,}"
        speedup = _fmt(row.get("speedup_vs_global"), ".2f")
        lines.append(
            f"| {row['model']} | {row['kind']} | {row['test_accuracy']:.4f} | {params} | {total} | "
            f"{_fmt(row.get('train_wall_s'), '.1f')} | {_fmt(row.get('time_to_model_s'), '.1f')} | {speedup + 'x' if speedup else ''} |"
        )
    comparison = results.get("comparison") or (comparison_summary(results) if results.get("baselines") else None)
    if comparison and comparison.get("speedup"):
        lines += [
            "",
            f"Decomposed pipeline: {comparison['decomposed_wall_s']:.1f} s (local phase + aggregation); "
            f"global model: {comparison['global_train_wall_s']:.1f} s of training; "
            f"speedup {comparison['speedup']:.2f}x"
            + (f" ({comparison['speedup_compute']:.2f}x without worker start-up)." if comparison.get("speedup_compute") else "."),
        ]
    for sentence in notes(results):
        lines += ["", sentence]
    timings = results.get("timings_s", {})
    if timings:
        lines += ["", "| timing | seconds |", "|---|---|"] + [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    (out_dir / TABLE_MD).write_text("\n".join(lines) + "\n")


def print_table(results: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    rows = comparison_rows(results)
    with_speedup = any(r.get("speedup_vs_global") for r in rows)
    table = Table(title="ddray results (test accuracy)")
    columns = ["model", "kind", "test accuracy", "parameters", "train wall (s)"] + (["speedup vs global"] if with_speedup else [])
    for col in columns:
        table.add_column(col, justify="right" if col not in ("model", "kind") else "left")
    for row in rows:
        params = _num(row.get("parameters"))
        cells = [
            row["model"],
            row["kind"],
            f"{row['test_accuracy']:.4f}",
            f"{int(params):,}" if params else "",
            _fmt(row.get("train_wall_s"), ".1f"),
        ]
        if with_speedup:
            speedup = _fmt(row.get("speedup_vs_global"), ".2f")
            cells.append(speedup + "x" if speedup else "")
        table.add_row(*cells, style="bold green" if row["kind"] != "local" else None)
    console.print(table)
    comparison = results.get("comparison") or {}
    if comparison.get("speedup"):
        console.print(f"speed-up of the decomposed pipeline over the global model's training: {comparison['speedup']:.2f}x")
    for sentence in notes(results):
        console.print(sentence)
    timings = results.get("timings_s", {})
    if timings:
        console.print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
