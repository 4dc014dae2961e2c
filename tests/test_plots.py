"""The pictures of a run (ddray/plots.py): where values go (pure functions), and that every PNG is written."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from ddray import plots, report
from ddray.decomposition import decompose


def _history(epochs: int, start: float = 0.3) -> list[dict]:
    return [
        {"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e, "val_accuracy": min(1.0, start + 0.1 * e), "epoch_seconds": 0.1}
        for e in range(1, epochs + 1)
    ]


def _results(grid: list[int], shape: list[int], num_classes: int = 3) -> dict:
    n = int(np.prod(grid))
    return {
        "local": [{"subdomain": i, "test_accuracy": 0.5 + 0.4 * i / max(1, n - 1), "parameters": 10, "train_seconds": 1.0} for i in range(n)],
        "aggregation": {"dnn": {"test_accuracy": 0.9, "parameters": 50, "train_wall_s": 0.5}, "average": {"test_accuracy": 0.8, "parameters": 0}},
        "timings_s": {"local_wall": 3.0, "aggregation_wall": 0.5},
        "dataset": {"spatial_shape": shape, "num_classes": num_classes, "class_names": [f"class {k}" for k in range(num_classes)]},
        "decomposition": {"grid": grid, "overlap": 0, "subdomains": n},
        "config": {"decomposition": {"grid": grid}},
    }


def _png(path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


def test_grid_values_2d_follow_the_decomposition_order():
    grid = [2, 3]
    values = {i: i / 10 for i in range(6)}
    arranged = plots.grid_values(values, grid)
    assert arranged.shape == (2, 3)
    for sub in decompose((12, 18), grid):  # the subdomain at grid position (row, col) has index sub.index
        assert arranged[sub.position] == values[sub.index]
    assert arranged[0, 2] == 0.2 and arranged[1, 0] == 0.3  # row-major: index 2 is top right, 3 bottom left


def test_grid_values_3d_and_missing_subdomains():
    grid = [2, 2, 3]
    values = {i: float(i) for i in range(12) if i != 7}
    arranged = plots.grid_values(values, grid)
    assert arranged.shape == (2, 2, 3)
    for sub in decompose((8, 8, 12), grid):
        if sub.index == 7:
            assert np.isnan(arranged[sub.position]) and sub.position == (1, 0, 1)
        else:
            assert arranged[sub.position] == sub.index
    assert arranged[1, 1, 2] == 11.0  # the last subdomain: deepest slice, bottom right


def test_confusion_matrix_counts_true_rows_predicted_columns():
    labels = np.array([0, 0, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 2, 2, 0])
    matrix = plots.confusion_matrix(predicted, labels, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert matrix.sum() == 6 and np.trace(matrix) == 4


def test_median_curve_over_curves_of_different_lengths():
    median = plots.median_curve([[1.0, 2.0, 3.0], [3.0, 4.0], [2.0, np.nan, 5.0, 7.0]])
    np.testing.assert_allclose(median, [2.0, 3.0, 4.0, 7.0])
    assert plots.median_curve([]).size == 0


def test_write_pictures_2d(tmp_path):
    results = _results([2, 2], [32, 32])
    histories = {
        "local": {i: _history(6, 0.2 + 0.05 * i) for i in range(4)},
        "dnn": _history(20, 0.6),
        "baselines": {"global": _history(6, 0.4)},
    }
    matrix = plots.confusion_matrix(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2]), 3)
    written = plots.write_pictures(results, tmp_path, histories, matrix)
    assert [p.name for p in written] == ["learning_curves.png", "confusion_matrix.png", "subdomain_accuracy.png"]
    for path in written:
        width, height = _png(path)
        assert width > 300 and height > 300


def test_subdomain_heat_map_3d_and_many_subdomains(tmp_path):
    results = _results([2, 2, 2], [16, 16, 16])
    plots.plot_subdomain_accuracy(results, tmp_path / "3d.png")
    one = _png(tmp_path / "3d.png")
    results = _results([8, 8], [64, 64], num_classes=12)
    histories = {"local": {i: _history(5 + i % 3) for i in range(64)}, "dnn": _history(30)}
    plots.write_pictures(results, tmp_path, histories, np.eye(12, dtype=int) * 5)
    assert one[0] > 400  # two depth slices side by side
    for name in ("learning_curves.png", "confusion_matrix.png", "subdomain_accuracy.png"):
        _png(tmp_path / name)


def test_write_reports_draws_everything_and_a_failed_picture_only_warns(tmp_path, monkeypatch, caplog):
    results = _results([2, 2], [32, 32])
    report.write_reports(results, tmp_path, {"local": {0: _history(3)}, "dnn": [], "baselines": {}}, np.eye(3, dtype=int))
    for name in ("accuracy.png", "learning_curves.png", "confusion_matrix.png", "subdomain_accuracy.png", "results.md", "results.csv"):
        assert (tmp_path / name).exists(), name

    def broken(*args, **kwargs):
        raise ValueError("no ink")

    monkeypatch.setattr(plots, "plot_learning_curves", broken)
    for name in ("learning_curves.png", "subdomain_accuracy.png"):
        (tmp_path / name).unlink()
    with caplog.at_level(logging.WARNING, logger="ddray.plots"):
        report.write_reports(results, tmp_path, {"dnn": _history(3)}, np.eye(3, dtype=int))
    assert "learning_curves.png failed (ValueError: no ink)" in caplog.text
    assert (tmp_path / "subdomain_accuracy.png").exists()  # the other pictures are still drawn
    monkeypatch.setattr(plots, "plot_accuracy", broken)  # the run's summary still fails loudly
    with pytest.raises(ValueError, match="no ink"):
        report.write_reports(results, tmp_path)
