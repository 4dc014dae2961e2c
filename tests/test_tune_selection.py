"""Trial selection of the Tune search, on synthetic records (no Ray): statuses, ties, modes, files."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd

from ddray.orchestration.tune.selection import (
    TrialRecord,
    classify,
    finite,
    read_best,
    select_best,
    write_best,
    write_trials_csv,
)

ACC, LOSS = "selected_val_accuracy", "selected_val_loss"


def record(tid, metrics, error=None, checkpoint=True, subdomain=0):
    return TrialRecord(tid, subdomain, {"lr": 0.01}, metrics, object() if checkpoint else None, error)


def done(tid, acc, loss, **extra):
    """A trial that reported its final result with a checkpoint."""
    return record(tid, {ACC: acc, LOSS: loss, "final": 1, **extra})


def test_importing_selection_does_not_import_ray():
    code = "import sys, ddray.orchestration.tune.selection; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_selection_uses_validation_only_and_missing_metrics_are_failures():
    records = [
        done("a", 0.70, 0.9, test_accuracy=0.99),
        done("b", 0.80, 0.8, test_accuracy=0.10),
        done("c", 0.80, 0.5),  # tie: lower loss wins
        record("d", {"epoch": 1}),  # reported, but never the metric
        record("e", {}, checkpoint=False),  # never reported anything
        record("f", {ACC: 0.95, LOSS: 0.1}, error="boom"),
        record("g", {ACC: 0.99, LOSS: 0.1}),  # stopped early, no final report
        record("h", {"skipped": 1, ACC: float("nan")}),
    ]
    classify(records, ACC, asha=True)
    assert [r.status for r in records] == ["completed", "completed", "completed", "failed", "failed", "failed", "stopped", "skipped"]
    assert "validation metric" in records[3].error and "validation metric" in records[4].error
    assert records[5].error == "boom"  # the trial's own error is kept
    assert select_best(records, ACC, "max").trial_id == "c"
    # without ASHA, a trial that ends without its final report failed
    classify(records, ACC, asha=False)
    assert records[6].status == "failed" and "final report" in records[6].error
    # the loss metric picks the lowest loss
    assert select_best(records, LOSS, "min").trial_id == "c"
    assert select_best([records[3], records[4]], ACC, "max") is None


def test_accuracy_tie_goes_to_lower_loss_then_to_first_trial_id():
    records = [done("t3", 0.8, 0.4), done("t1", 0.8, 0.6), done("t2", 0.8, 0.4), done("t0", 0.7, 0.1)]
    classify(records, ACC, asha=False)
    assert select_best(records, ACC, "max").trial_id == "t2"  # t2 and t3 tie on both: first id


def test_a_missing_tie_breaker_loses_the_tie():
    records = [done("x", 0.8, float("nan")), done("y", 0.8, 0.9)]  # x's loss diverged, its accuracy ties
    classify(records, ACC, asha=False)
    assert select_best(records, ACC, "max").trial_id == "y"
    records = [done("x", float("nan"), 0.2), done("y", 0.1, 0.2)]  # loss ties; x never got an accuracy
    classify(records, LOSS, asha=False)
    assert select_best(records, LOSS, "min").trial_id == "y"


def test_min_mode_for_val_loss_breaks_ties_by_higher_accuracy():
    records = [done("a", 0.9, 0.30), done("b", 0.5, 0.20), done("c", 0.7, 0.20), done("d", 0.99, 0.25)]
    classify(records, LOSS, asha=False)
    assert select_best(records, LOSS, "min").trial_id == "c"
    # the same records in max mode of accuracy pick another trial: mode and metric really matter
    assert select_best(records, ACC, "max").trial_id == "d"


def test_a_trial_that_never_reported_the_selection_metric_is_never_chosen():
    records = [
        record("a", {"val_accuracy": 0.99, "final": 1}),  # per-epoch metric only, no selected_ metric
        record("b", {ACC: float("inf"), LOSS: 0.1, "final": 1}),  # not finite
        record("c", {ACC: "n/a", LOSS: 0.1, "final": 1}),  # not a number
        done("d", 0.1, 2.0),
    ]
    classify(records, ACC, asha=True)
    assert [r.status for r in records] == ["failed", "failed", "failed", "completed"]
    assert select_best(records, ACC, "max").trial_id == "d"


def test_a_final_report_without_checkpoint_is_not_a_candidate():
    records = [record("a", {ACC: 0.9, LOSS: 0.1, "final": 1}, checkpoint=False), done("b", 0.2, 1.0)]
    classify(records, ACC, asha=True)
    assert [r.status for r in records] == ["stopped", "completed"]
    assert select_best(records, ACC, "max").trial_id == "b"


def test_no_completed_trial_selects_none():
    records = [
        record("a", {ACC: 0.9, LOSS: 0.1}, error="Traceback ... ValueError: bad optimizer"),
        record("b", {ACC: 0.95, LOSS: 0.1}),  # stopped by ASHA
        record("c", {"skipped": 1}),
    ]
    classify(records, ACC, asha=True)
    assert [r.status for r in records] == ["failed", "stopped", "skipped"]
    assert select_best(records, ACC, "max") is None
    assert select_best([], ACC, "max") is None


def test_from_trial_reads_duck_typed_trials(tmp_path):
    error_file = tmp_path / "error.txt"
    error_file.write_text("Traceback (most recent call last):\n  File x\n    raise\nValueError: no-such-optimizer\n")
    failed = SimpleNamespace(trial_id="t0", status="ERROR", config={"subdomain": 2, "lr": 0.1}, last_result=None,
                             checkpoint=None, error_file=str(error_file))
    r = TrialRecord.from_trial(failed)
    assert (r.trial_id, r.subdomain, r.config, r.metrics) == ("t0", 2, {"lr": 0.1}, {})
    assert r.error.endswith("ValueError: no-such-optimizer")
    # an error whose file is gone still counts as an error, with a pointer to the trial folder
    gone = SimpleNamespace(**{**vars(failed), "error_file": str(tmp_path / "missing")})
    assert "Tune trial folder" in TrialRecord.from_trial(gone).error
    ok = SimpleNamespace(trial_id="t1", status="TERMINATED", config={"subdomain": 1}, last_result={ACC: 0.5}, checkpoint="ckpt")
    r = TrialRecord.from_trial(ok)
    assert (r.subdomain, r.error, r.metrics, r.checkpoint) == (1, None, {ACC: 0.5}, "ckpt")


def test_finite():
    assert finite(0) and finite("0.5") and finite(1e300)
    assert not any(finite(v) for v in (None, float("nan"), float("-inf"), "x", [1]))


def test_trials_csv_marks_the_chosen_trial_and_keeps_errors(tmp_path):
    records = [done("a", 0.6, 0.5, epoch=3), done("b", 0.9, 0.2, epoch=3), record("c", {}, error="boom")]
    classify(records, ACC, asha=False)
    best = select_best(records, ACC, "max")
    path = tmp_path / "sub000_trials.csv"
    write_trials_csv(path, records, best)
    frame = pd.read_csv(path)
    assert frame.trial_id.tolist() == ["a", "b", "c"]
    assert frame.chosen.tolist() == [False, True, False]
    assert frame.status.tolist() == ["completed", "completed", "failed"]
    assert frame["config/lr"].tolist() == [0.01] * 3
    assert frame.selected_val_accuracy.tolist()[:2] == [0.6, 0.9] and frame.error.tolist()[2] == "boom"
    # no winner: nothing is marked chosen
    write_trials_csv(path, records, None)
    assert not pd.read_csv(path).chosen.any()


def test_best_configs_round_trip_sorted_by_subdomain(tmp_path):
    path = tmp_path / "best_configs.json"
    assert read_best(path) == {}  # no earlier session
    best = {3: {"subdomain": 3, "config": {"lr": 0.1}}, 0: {"subdomain": 0, "config": {"lr": 0.2}}}
    write_best(path, best, ACC)
    saved = json.loads(path.read_text())
    assert saved["metric"] == ACC and [e["subdomain"] for e in saved["best"]] == [0, 3]
    assert read_best(path) == best
    assert not path.with_suffix(".json.tmp").exists()
