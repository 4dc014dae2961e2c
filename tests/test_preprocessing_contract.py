"""One preprocessing contract (docs/preprocessing.md): the same image reaches the model as the
same tensor whichever file format carried it, in training and in every prediction path, and
inputs far from the training distribution are flagged.

Real files (npz written by numpy, PNGs written by Pillow), a real tiny ``ddray.run`` on the
shared local Ray, the real CLI in a subprocess and the real REST routes through FastAPI's
TestClient (only the job runner is swapped out, as in test_api_routes.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddray.config import DatasetConfig
from ddray.data import DataError, Preprocessing, load_dataset, read_predict_inputs, scale_values, value_divisor

ROOT = Path(__file__).resolve().parents[1]


def uint8_digits(n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's bundled digits as 16x16 uint8 images 0..255 (N, 1, 16, 16): a real 8-bit data set."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images[:n] if n else bunch.images
    x = np.stack(
        [np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((16, 16), Image.BILINEAR)) for im in images]
    )
    return x[:, None], bunch.target[: len(x)].astype(np.int64)


def write_pngs(folder: Path, x: np.ndarray, names=None) -> list[str]:
    """Each (C, H, W) uint8/uint16 image of ``x`` as a PNG written by Pillow; returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"img{i:03d}.png" for i in range(len(x))]
    for name, image in zip(names, x):
        Image.fromarray(image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)).save(folder / name)
    return names


def npz_dataset(tmp_path: Path, **arrays) -> "Dataset":  # noqa: F821
    np.savez(tmp_path / "train.npz", **arrays)
    return load_dataset(DatasetConfig(source="npz", path=str(tmp_path / "train.npz")), seed=0)


# ------------------------------------------------------------------ the value rule, no Ray


def test_value_rule_by_dtype():
    assert value_divisor(np.uint8) == 255 and value_divisor(np.int8) == 127
    assert value_divisor(np.uint16) == 65535 and value_divisor(np.int16) == 32767 and value_divisor(np.bool_) == 1
    for stored in (np.float16, np.float32, np.float64, np.int32, np.int64, np.uint32):
        assert value_divisor(stored) is None  # as stored
    x = np.array([[[[0, 51, 255]]]], dtype=np.uint8)
    np.testing.assert_array_equal(scale_values(x, origin="t"), np.array([[[[0, 0.2, 1]]]], np.float32))
    np.testing.assert_array_equal(scale_values(x.astype(np.float32), origin="t"), x.astype(np.float32))  # floats as stored
    np.testing.assert_array_equal(scale_values(np.array([[[[0, 65535]]]], np.uint16), origin="t"), [[[[0, 1]]]])


def test_the_same_image_is_the_same_tensor_from_npz_and_png(tmp_path):
    """Gray and RGB 8-bit, and 16-bit gray: npz of the stored dtype, a folder of PNGs and single PNG
    files give bit-identical model inputs."""
    rng = np.random.default_rng(0)
    for channels, dtype in ((1, np.uint8), (3, np.uint8), (1, np.uint16)):
        top = np.iinfo(dtype).max
        x = rng.integers(0, top + 1, size=(60, channels, 12, 12), dtype=dtype)
        y = np.arange(60) % 3
        case = tmp_path / f"{channels}-{np.dtype(dtype).name}"
        case.mkdir()
        ds = npz_dataset(case, x=x, y=y)
        prep = Preprocessing.from_dict(json.loads(json.dumps(ds.preprocessing.to_dict())))
        assert prep.value_scale == "dtype_max" and prep.source_values == f"{np.dtype(dtype).name} / {top}"
        assert 0 <= min(prep.value_min) < 0.01 and 0.99 < max(prep.value_max) <= 1  # scaled to 0..1

        np.savez(case / "new.npz", x=x[:6])
        names = write_pngs(case / "png", x[:6])
        from_npz, w1 = prep.prepare(read_predict_inputs(case / "new.npz", prep)[0])
        from_png, w2 = prep.prepare(read_predict_inputs(case / "png", prep)[0])
        one_png, _ = prep.prepare(read_predict_inputs(case / "png" / names[2], prep)[0])
        np.testing.assert_array_equal(from_npz, from_png)
        np.testing.assert_array_equal(one_png[0], from_npz[2])
        assert w1 == [] and w2 == []
        # and the training split holds exactly these tensors: training used the same rule
        seen = {row.tobytes() for row in prep.apply(x)}
        assert all(row.tobytes() in seen for row in ds.x_train)


def test_training_from_png_folder_and_from_uint8_npz_gives_the_same_data(tmp_path):
    """imagefolder and npz are two carriers of the same pixels: identical splits and fingerprint."""
    x, y = uint8_digits(120)
    x, y = x[np.isin(y, [0, 1])], y[np.isin(y, [0, 1])]
    a, b = x[y == 0][:12], x[y == 1][:12]
    write_pngs(tmp_path / "folder" / "a", a, [f"{i:03d}.png" for i in range(len(a))])
    write_pngs(tmp_path / "folder" / "b", b, [f"{i:03d}.png" for i in range(len(b))])
    # the folder loader interleaves classes (a0, b0, a1, b1, ...): store the npz in that order
    inter = np.stack([a, b], axis=1).reshape(-1, *a.shape[1:])
    np.savez(tmp_path / "same.npz", x=inter, y=np.tile([0, 1], len(a)), class_names=np.array(["a", "b"]))
    from_folder = load_dataset(DatasetConfig(source="imagefolder", path=str(tmp_path / "folder")), seed=0)
    from_npz = load_dataset(DatasetConfig(source="npz", path=str(tmp_path / "same.npz")), seed=0)
    for split in ("x_train", "x_val", "x_test", "y_train", "y_test"):
        np.testing.assert_array_equal(getattr(from_folder, split), getattr(from_npz, split))
    assert from_folder.preprocessing.mean == from_npz.preprocessing.mean
    assert from_folder.fingerprint() == from_npz.fingerprint()
    assert len(from_npz.fingerprint()) == 64


def test_x_and_x_test_on_different_scales_are_refused(tmp_path):
    x = np.zeros((20, 1, 8, 8), np.uint8)
    np.savez(tmp_path / "mixed.npz", x=x, y=np.arange(20) % 2, x_test=x[:4].astype(np.float32), y_test=np.arange(4) % 2)
    with pytest.raises(DataError, match=r"mixed.npz: 'x' is uint8 \(uint8 / 255\) but 'x_test' is float32 \(float32 as stored\)"):
        load_dataset(DatasetConfig(source="npz", path=str(tmp_path / "mixed.npz")), seed=0)


def test_legacy_record_keeps_the_old_behaviour():
    """A preprocessing.json written before the rule has no value_scale: npz arrays as stored."""
    old = {"channels": 1, "spatial_shape": [4, 4], "mean": [100.0], "std": [50.0], "resize": None}
    prep = Preprocessing.from_dict(old)
    assert prep.legacy and prep.to_dict()["value_scale"] == "as_stored"
    x = np.full((2, 1, 4, 4), 200, np.uint8)
    np.testing.assert_array_equal(prep.apply(x), np.full((2, 1, 4, 4), 2.0, np.float32))  # (200 - 100) / 50
    assert Preprocessing.from_dict({**old, "value_scale": "dtype_max"}).apply(x)[0, 0, 0, 0] == pytest.approx((200 / 255 - 100) / 50)
    with pytest.raises(DataError, match="unknown value_scale 'log'.*newer ddray"):
        Preprocessing.from_dict({**old, "value_scale": "log"})


# ------------------------------------------------------------------ out-of-range inputs, no Ray


def test_range_warnings_name_the_likely_cause(tmp_path):
    x, y = uint8_digits(200)
    ds = npz_dataset(tmp_path, x=x, y=y)
    prep = ds.preprocessing  # trained on uint8 -> 0..1
    assert prep.prepare(x[:20])[1] == []
    assert prep.prepare(x[:1])[1] == []  # a single ordinary image is not flagged

    # model inputs (already normalised) taken as stored values would be normalised twice
    _, found = prep.prepare(ds.x_test)
    assert len(found) == 1 and "inputs look already normalised" in found[0] and "preprocessed=True" in found[0]
    assert prep.check_model_inputs(ds.x_test) == []

    _, found = prep.prepare(x[:20].astype(np.float32), origin="scaled.npz")  # 8-bit values saved as floats
    assert len(found) == 1
    assert found[0].startswith("scaled.npz: inputs look 0-255 but the model was trained on 0-1")
    assert "uint8 / 255" in found[0] and "divide float inputs by 255" in found[0]

    _, found = prep.prepare(x[:20] / np.float32(255) * 30)
    assert len(found) == 1 and "about 30x larger than the training data" in found[0]

    # the other way round: a model trained on float 0-255 arrays (used as stored) asked about PNGs
    (tmp_path / "f").mkdir()
    float_prep = npz_dataset(tmp_path / "f", x=x.astype(np.float32), y=y).preprocessing
    assert float_prep.source_values == "float32 as stored"
    write_pngs(tmp_path / "png", x[:5])
    _, found = float_prep.prepare(read_predict_inputs(tmp_path / "png", float_prep)[0], origin="png")
    assert len(found) == 1 and found[0].startswith("png: inputs look 0-1 but the model was trained on 0-255")
    assert "multiply these inputs by 255" in found[0]

    # a channel far off while the value scale matches: narrow training data, wide inputs
    rng = np.random.default_rng(0)
    (tmp_path / "n").mkdir()
    narrow = npz_dataset(tmp_path / "n", x=(0.5 + 0.01 * rng.standard_normal((60, 2, 8, 8))).astype(np.float32), y=np.arange(60) % 2)
    wide = rng.random((10, 2, 8, 8)).astype(np.float32)
    wide[:, 0] = 0.5 + 0.01 * rng.standard_normal((10, 8, 8))  # channel 0 as in training
    _, found = narrow.preprocessing.prepare(wide)
    assert len(found) == 1 and found[0].startswith("inputs: channel 1 of the inputs has mean")

    # a legacy record (no value range) still detects the 255 factor from its mean/std
    legacy = Preprocessing.from_dict({k: v for k, v in prep.to_dict().items() if k in ("channels", "spatial_shape", "mean", "std", "resize")})
    _, found = legacy.prepare(x[:20])  # uint8 as stored (legacy) against 0..1 statistics
    assert len(found) == 1 and "inputs look 0-255 but the model was trained on 0-1" in found[0]


# ------------------------------------------------------------------ a real run: npz, PNG, CLI and REST agree


@pytest.fixture(scope="module")
def uint8_run(ray_cluster, tmp_path_factory):
    """A tiny real run trained on a uint8 npz (digits 0..255); its folder sits where a REST job's would."""
    from ddray.config import parse_config
    from ddray.orchestration.driver import run

    root = tmp_path_factory.mktemp("uint8")
    x, y = uint8_digits()
    np.savez(root / "train.npz", x=x[:900], y=y[:900], x_test=x[1500:1560], y_test=y[1500:1560])
    config = parse_config(
        {
            "dataset": {"source": "npz", "path": str(root / "train.npz")},
            "decomposition": {"grid": [2, 2], "overlap": 0},
            "local_model": {"name": "small_cnn", "width": 0.25},
            "training": {"epochs": 4, "batch_size": 64, "lr": 0.003},
            "aggregation": {"dnn": {"hidden": [32], "epochs": 40}},
        }
    )
    results = run(config, root / "job" / "run")
    return results, root, config, x[1500:1560], y[1500:1560]


@pytest.mark.ray
def test_uint8_npz_png_and_rest_give_identical_predictions(uint8_run, tmp_path):
    from ddray.predict import TrainedRun

    results, root, config, x_new, y_new = uint8_run
    run_dir = root / "job" / "run"
    saved = json.loads((run_dir / "preprocessing.json").read_text())
    assert saved["value_scale"] == "dtype_max" and saved["source_values"] == "uint8 / 255"
    assert 0 <= saved["mean"][0] <= 1 and saved["value_max"] == [1.0]

    np.savez(tmp_path / "same.npz", x=x_new)
    names = write_pngs(tmp_path / "png", x_new)
    model = TrainedRun(run_dir)
    by_npz = model.predict_path(tmp_path / "same.npz")
    by_png = model.predict_path(tmp_path / "png")
    by_array = model.predict_array(x_new)  # the stored uint8 array itself
    model_inputs = model.preprocessing.apply(x_new)
    by_inputs = model.predict_array(model_inputs, preprocessed=True)
    np.testing.assert_array_equal(by_inputs.probabilities, by_array.probabilities)
    assert by_inputs.warnings == []
    # model inputs passed without the flag are recognised (and said so), never normalised twice
    with pytest.warns(UserWarning, match="inputs look like model inputs already"):
        guessed = model.predict_array(model_inputs)
    np.testing.assert_array_equal(guessed.probabilities, by_array.probabilities)
    twice = model.predict_array(model_inputs, preprocessed=False, warn=False)
    assert len(twice.warnings) == 1 and "inputs look already normalised" in twice.warnings[0]
    for method in ("dnn", "average", "vote"):
        np.testing.assert_array_equal(by_npz.decisions[method], by_png.decisions[method])
        np.testing.assert_array_equal(by_npz.decisions[method], by_array.decisions[method])
    np.testing.assert_array_equal(by_npz.probabilities, by_png.probabilities)
    assert by_npz.warnings == by_png.warnings == by_array.warnings == []
    # the model is the run's: its test split is these images, so the DNN's test accuracy comes back
    accuracy = float((by_png.decisions["dnn"] == y_new).mean())
    assert accuracy == pytest.approx(results["aggregation"]["dnn"]["test_accuracy"], abs=1e-9)
    assert accuracy >= 0.6  # before the contract the PNG copy scored about 0.08 (every image one class)

    # REST: the same images uploaded as npz and as PNGs, against the real routes and job store
    from fastapi.testclient import TestClient

    from api.deps import get_runner
    from api.main import create_app
    from api.settings import ServiceSettings
    from service_doubles import FakeRunner

    token = "contract-test-token-0123456789"
    auth = {"Authorization": f"Bearer {token}"}
    settings = ServiceSettings(api_token=token, state_dir=tmp_path / "state", data_roots=[str(root)], max_upload_bytes=16 * 1024**2)
    app = create_app(settings)
    app.dependency_overrides[get_runner] = FakeRunner
    with TestClient(app) as client:
        store = app.state.store
        job = store.create(config.model_dump(mode="json"))
        store.claim_next("test")
        store.set_submission(job.id, submission_id=f"ddray-{job.id}", job_dir=str(root / "job"), run_location=str(run_dir))
        store.finish(job.id, "succeeded")
        uploads = [("files", ("same.npz", (tmp_path / "same.npz").read_bytes(), "application/octet-stream"))]
        uploads += [("files", (n, (tmp_path / "png" / n).read_bytes(), "image/png")) for n in names]
        r = client.post(f"/jobs/{job.id}/predict", files=uploads, headers=auth)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["count"] == 2 * len(x_new) and body["warnings"] == []
        rows = {row["input"]: row for row in body["records"]}
        local = dict(zip(names, by_png.records()))
        for i, name in enumerate(names):
            assert rows[f"same.npz:x[{i}]"]["dnn"] == rows[name]["dnn"] == local[name]["dnn"]
            assert rows[f"same.npz:x[{i}]"]["dnn_confidence"] == rows[name]["dnn_confidence"] == local[name]["dnn_confidence"]

        # a deliberately mis-scaled upload: 8-bit values saved as floats
        np.savez(tmp_path / "floats.npz", x=x_new[:8].astype(np.float32))
        r = client.post(f"/jobs/{job.id}/predict", files=[("files", ("floats.npz", (tmp_path / "floats.npz").read_bytes()))], headers=auth)
        assert r.status_code == 200 and r.json()["count"] == 8
        assert [w.split(" (")[0] for w in r.json()["warnings"]] == ["floats.npz: inputs look 0-255 but the model was trained on 0-1"]


@pytest.mark.ray
def test_cli_warns_about_mis_scaled_inputs(uint8_run, tmp_path):
    _, root, _, x_new, _ = uint8_run
    np.savez(tmp_path / "floats.npz", x=x_new[:5].astype(np.float32))
    proc = subprocess.run(
        [sys.executable, "-m", "ddray", "predict", str(root / "job" / "run"), str(tmp_path / "floats.npz"), "--json"],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)) == 5  # stdout stays the JSON rows
    assert "warning: " in proc.stderr and "inputs look 0-255 but the model was trained on 0-1" in proc.stderr
