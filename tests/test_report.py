"""The run's report says in words what its table cannot (no Ray)."""

from __future__ import annotations

from ddray.report import notes, write_tables


def test_notes_name_model_sizes_dnn_fit_and_transfer_start(tmp_path):
    results = {
        "local": [{"subdomain": 0, "test_accuracy": 0.8, "parameters": 500}],
        "aggregation": {"dnn": {"test_accuracy": 0.9, "parameters": 40, "fit_on": "val", "fit_samples": 30, "selection_samples": 10}},
        "baselines": {"transfer": {"test_accuracy": 0.93, "start_test_accuracy": 0.71, "transfer_init": "locals", "parameters": 540}},
        "parameters": {"local_width": 0.5, "width_auto": True, "local_total": 2000, "global_model": 1900, "local_to_global": 1.0526},
    }
    said = notes(results)
    assert said == [
        "The local CNNs (width 0.5 (auto: 1/sqrt(subdomains))) have 2,000 parameters together: 1.05x the global model's 1,900.",
        "The DNN was fitted on held-out validation probabilities (30 samples; epoch chosen on 10 others), not on the training set's.",
        "Transfer learning started (local CNNs, fresh DNN) at test accuracy 0.7100 and reached 0.9300 after fine-tuning.",
    ]
    write_tables(results, tmp_path)
    assert all(sentence in (tmp_path / "results.md").read_text() for sentence in said)
    assert notes({"aggregation": {"dnn": {"fit_on": "train"}}}) == []  # the defaults need no words
