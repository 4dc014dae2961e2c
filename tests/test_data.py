"""ddray.data: sources, validation messages, splits, preprocessing, predict inputs (no Ray)."""

from __future__ import annotations

import json
from itertools import product

import numpy as np
import pytest
from PIL import Image

from ddray.config import DatasetConfig
from ddray.data import DataError, Dataset, Preprocessing, load_dataset, load_predict_inputs
from ddray.data.synthetic import cell_bounds, generate_blobs, generate_count, mark_geometry
from ddray.decomposition import decompose

# the tiny fixtures below are too small to stratify the validation split
pytestmark = pytest.mark.filterwarnings("ignore:.*split is not stratified:RuntimeWarning")


def cfg(**kw) -> DatasetConfig:
    return DatasetConfig(**kw)


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def make_xy(n=100, c=1, spatial=(16, 16), classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, c, *spatial)).astype(np.float32)
    y = np.arange(n) % classes
    return x, y


def write_png(path, size=(12, 10), mode="RGB", value=None, seed=0):
    rng = np.random.default_rng(seed)
    w, h = size
    shape = (h, w) if mode == "L" else (h, w, 3)
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)
    return path


def check_dataset(ds: Dataset, channels: int, spatial: tuple[int, ...], classes: int) -> None:
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and x.flags["C_CONTIGUOUS"]
        assert y.dtype == np.int64 and len(x) == len(y) > 0
        assert x.shape[1:] == (channels, *spatial)
        assert y.min() >= 0 and y.max() < classes
    assert ds.in_channels == channels and ds.spatial_shape == spatial and ds.spatial_dims == len(spatial)
    assert ds.num_classes == classes and len(ds.class_names) == classes
    axes = (0,) + tuple(range(2, ds.x_train.ndim))
    np.testing.assert_allclose(ds.x_train.mean(axis=axes), 0.0, atol=1e-4)
    s = json.loads(json.dumps(ds.summary()))  # what results.json records
    for split, y in (("train", ds.y_train), ("val", ds.y_val), ("test", ds.y_test)):
        assert s[split] == len(y)
        assert s["class_counts"][split] == np.bincount(y, minlength=classes).tolist()
    assert s["spatial_shape"] == list(spatial) and s["num_classes"] == classes


def check_range_recorded(ds: Dataset, levels: int | None = None) -> None:
    """The record's value_min/value_max are the TRAIN split's per-channel range on the scaled values
    (what prediction inputs are checked against); with ``levels``, those values are k / levels."""
    prep = ds.preprocessing
    shape = (1, prep.channels) + (1,) * len(prep.spatial_shape)
    scaled = ds.x_train.astype(np.float64) * np.reshape(prep.std, shape) + np.reshape(prep.mean, shape)
    axes = (0,) + tuple(range(2, scaled.ndim))
    np.testing.assert_allclose(prep.value_min, scaled.min(axis=axes), atol=1e-5)
    np.testing.assert_allclose(prep.value_max, scaled.max(axis=axes), atol=1e-5)
    if levels is not None:  # e.g. uint8 / 255: every value is one of the 256 levels of 0..1
        np.testing.assert_allclose(scaled * levels, np.rint(scaled * levels), atol=1e-3)
        assert np.rint(scaled * levels).min() >= 0 and np.rint(scaled * levels).max() <= levels


# ------------------------------------------------------------------- sources


def test_digits_default_32x32():
    ds = load_dataset(cfg(source="digits"), seed=0, grid=[2, 2], overlap=2)
    check_dataset(ds, 1, (32, 32), 10)
    assert ds.class_names == [str(i) for i in range(10)]
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 1797
    assert ds.preprocessing.resize == [32, 32]
    np.testing.assert_allclose(ds.x_train.std(), 1.0, atol=1e-3)


def test_digits_image_size_and_limit():
    ds = load_dataset(cfg(source="digits", image_size=[16, 12], limit=200), seed=1)
    check_dataset(ds, 1, (16, 12), 10)
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 200


def test_npz_without_test_split(tmp_path):
    x, y = make_xy(100, c=2, classes=4)
    x = (x * 255).astype(np.uint8)  # integer pixels are allowed
    p = save_npz(tmp_path / "data.npz", x=x, y=y, class_names=np.array(["a", "b", "c", "d"]))
    ds = load_dataset(cfg(source="npz", path=str(p), test_fraction=0.2, validation_fraction=0.1), seed=0)
    check_dataset(ds, 2, (16, 16), 4)
    # ... and scaled like image files: uint8 / 255 (docs/preprocessing.md)
    prep = ds.preprocessing
    assert prep.source_values == "uint8 / 255"
    check_range_recorded(ds, levels=255)
    assert all(0.3 < m < 0.7 for m in prep.mean)
    assert ds.class_names == ["a", "b", "c", "d"]
    assert len(ds.y_test) == 20 and len(ds.y_val) == 8 and len(ds.y_train) == 72
    assert np.bincount(ds.y_test).tolist() == [5, 5, 5, 5]  # stratified


def test_npz_with_test_split(tmp_path):
    x, y = make_xy(60, classes=3)
    xt, yt = make_xy(15, classes=3, seed=1)
    p = save_npz(tmp_path / "data.npz", x=x, y=y.astype(np.uint8), x_test=xt, y_test=yt.astype(np.float64))
    ds = load_dataset(cfg(source="npz", path=str(p)), seed=0)
    check_dataset(ds, 1, (16, 16), 3)
    assert len(ds.y_test) == 15 and len(ds.y_train) + len(ds.y_val) == 60
    np.testing.assert_array_equal(ds.y_test, yt)
    assert ds.class_names == ["0", "1", "2"]
    # the provided test split is normalised with the TRAIN statistics
    p_ = ds.preprocessing
    np.testing.assert_allclose(ds.x_test, (xt - p_.mean[0]) / p_.std[0], atol=1e-5)


def test_npz_3d_volumes(tmp_path):
    x, y = make_xy(40, c=1, spatial=(8, 8, 8), classes=2)
    p = save_npz(tmp_path / "vol.npz", x=x, y=y)
    ds = load_dataset(cfg(source="npz", path=str(p)), seed=0, grid=[2, 2, 2])
    check_dataset(ds, 1, (8, 8, 8), 2)


def test_npz_image_size_rejected_for_volumes(tmp_path):
    x, y = make_xy(40, spatial=(8, 8, 8), classes=2)
    p = save_npz(tmp_path / "vol.npz", x=x, y=y)
    with pytest.raises(DataError, match="vol.npz.*image_size.*3D volumes"):
        load_dataset(cfg(source="npz", path=str(p), image_size=[4, 4]), seed=0)


def test_imagefolder_rgb(tmp_path):
    root = tmp_path / "imgs"
    for cls in ("cat", "dog", "eel"):
        for i in range(6):
            write_png(root / cls / f"{i}.png", seed=i)
    ds = load_dataset(cfg(source="imagefolder", path=str(root)), seed=0)
    check_dataset(ds, 3, (10, 12), 3)
    assert ds.class_names == ["cat", "dog", "eel"]
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 18


def test_imagefolder_grayscale_resize_and_limit(tmp_path):
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        for i in range(8):
            write_png(root / cls / f"{i}.png", size=(10 + i, 9), mode="L", seed=i)
    with pytest.raises(DataError, match=r"imgs.*different sizes.*dataset.image_size"):
        load_dataset(cfg(source="imagefolder", path=str(root)), seed=0)
    ds = load_dataset(cfg(source="imagefolder", path=str(root), image_size=[8, 8], limit=10), seed=0)
    check_dataset(ds, 1, (8, 8), 2)
    labels = np.concatenate([ds.y_train, ds.y_val, ds.y_test])
    assert len(labels) == 10 and np.bincount(labels).tolist() == [5, 5]  # limit keeps every class
    assert ds.preprocessing.resize == [8, 8]


def test_imagefolder_train_test_layout(tmp_path):
    root = tmp_path / "split"
    for split, n in (("train", 6), ("test", 3)):
        for cls in ("x", "y"):
            for i in range(n):
                write_png(root / split / cls / f"{i}.png", size=(8, 8), seed=i)
    ds = load_dataset(cfg(source="imagefolder", path=str(root)), seed=0, grid=[2, 2])
    check_dataset(ds, 3, (8, 8), 2)
    assert len(ds.y_test) == 6 and len(ds.y_train) + len(ds.y_val) == 12
    assert ds.class_names == ["x", "y"]


def test_imagefolder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty.*no class folders"):
        load_dataset(cfg(source="imagefolder", path=str(empty)), seed=0)
    (empty / "cls").mkdir()
    with pytest.raises(DataError, match="cls.*no image files"):
        load_dataset(cfg(source="imagefolder", path=str(empty)), seed=0)
    loose = tmp_path / "loose"
    write_png(loose / "a.png")
    with pytest.raises(DataError, match="loose.*directly in it"):
        load_dataset(cfg(source="imagefolder", path=str(loose)), seed=0)
    bad = tmp_path / "bad"
    write_png(bad / "a" / "ok.png")
    (bad / "b").mkdir()
    (bad / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png.*cannot read image"):
        load_dataset(cfg(source="imagefolder", path=str(bad)), seed=0)


# ------------------------------------------------------------------ synthetic


def marked_cells(x: np.ndarray, size, cells, threshold=0.5) -> np.ndarray:
    """(N,) number of cells whose maximum exceeds ``threshold``, per sample."""
    bounds = cell_bounds(size, cells)
    n = np.zeros(len(x), dtype=np.int64)
    for pos in product(*(range(c) for c in cells)):
        sl = tuple(slice(*bounds[a][p]) for a, p in enumerate(pos))
        cell = x[(slice(None), slice(None), *sl)]
        n += cell.reshape(len(x), -1).max(axis=1) > threshold
    return n


@pytest.mark.parametrize("size,cells", [([16, 16], [2, 2]), ([20, 24], [3, 2]), ([16, 16, 16], [2, 2, 2])])
def test_synthetic_count_label_is_number_of_marked_cells(size, cells):
    x, y = generate_count(size, cells, samples=300, channels=2, seed=3)
    assert x.shape == (300, 2, *size) and x.dtype == np.float32
    np.testing.assert_array_equal(marked_cells(x, size, cells), y)
    n_cells = int(np.prod(cells))
    assert set(np.unique(y)) == set(range(n_cells + 1))
    assert np.bincount(y).min() > 300 / (n_cells + 1) / 2  # roughly balanced
    x2, y2 = generate_count(size, cells, samples=300, channels=2, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(generate_count(size, cells, 300, 2, seed=4)[1], y)


def test_synthetic_count_marks_stay_inside_their_subdomain_with_overlap():
    size, cells = [16, 16], [2, 2]
    overlap = 2 * mark_geometry(8)[1]
    x, _ = generate_count(size, cells, samples=200, channels=1, seed=0)
    bounds = cell_bounds(size, cells)
    for sub in decompose(size, cells, overlap):
        core = tuple(slice(*bounds[a][p]) for a, p in enumerate(sub.position))
        tile_max = sub.extract(x).reshape(200, -1).max(axis=1)
        core_max = x[(slice(None), slice(None), *core)].reshape(200, -1).max(axis=1)
        np.testing.assert_array_equal(tile_max > 0.5, core_max > 0.5)


def test_synthetic_count_via_load_dataset_uses_grid_and_cells():
    ds = load_dataset(cfg(source="synthetic", kind="count", size=[16, 16], samples=200), seed=0, grid=[2, 2])
    check_dataset(ds, 1, (16, 16), 5)
    ds = load_dataset(cfg(source="synthetic", kind="count", size=[12, 12, 12], samples=200), seed=0, grid=[2, 2, 1])
    check_dataset(ds, 1, (12, 12, 12), 5)
    ds = load_dataset(cfg(source="synthetic", size=[18, 18], cells=[3, 3], samples=200), seed=0, grid=[2, 2])
    check_dataset(ds, 1, (18, 18), 10)
    with pytest.raises(DataError, match="synthetic.*too small for \\[4, 4\\] cells"):
        load_dataset(cfg(source="synthetic", size=[8, 8], cells=[4, 4]), seed=0)


@pytest.mark.parametrize("size", [[16, 16], [12, 12, 12]])
def test_synthetic_blobs(size):
    x, y = generate_blobs(size, classes=4, samples=200, channels=1, seed=0)
    assert x.shape == (200, 1, *size)
    assert np.bincount(y).tolist() == [50] * 4
    # the class-mean images peak at distinct places
    peaks = {np.unravel_index(x[y == k, 0].mean(axis=0).argmax(), size) for k in range(4)}
    assert len(peaks) == 4
    ds = load_dataset(cfg(source="synthetic", kind="blobs", size=size, classes=4, samples=200), seed=0)
    check_dataset(ds, 1, tuple(size), 4)


# --------------------------------------------------------------------- splits


def ids_npz(tmp_path, n=120, classes=3):
    x = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 1, 8, 8)).copy()
    p = save_npz(tmp_path / "ids.npz", x=x, y=np.arange(n) % classes)
    return p


def split_ids(ds: Dataset) -> list[np.ndarray]:
    m, s = ds.preprocessing.mean[0], ds.preprocessing.std[0]
    return [np.rint(x[:, 0, 0, 0] * s + m).astype(int) for x in (ds.x_train, ds.x_val, ds.x_test)]


def test_splits_seeded_disjoint_and_stratified(tmp_path):
    p = ids_npz(tmp_path)
    c = cfg(source="npz", path=str(p), test_fraction=0.25, validation_fraction=0.2)
    a = split_ids(load_dataset(c, seed=7))
    b = split_ids(load_dataset(c, seed=7))
    other = split_ids(load_dataset(c, seed=8))
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(np.sort(a[2]), np.sort(other[2]))
    train, val, test = (set(s.tolist()) for s in a)
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(range(120))
    assert len(test) == 30 and len(val) == 18
    assert np.bincount(np.asarray(sorted(test)) % 3).tolist() == [10, 10, 10]
    ds = load_dataset(c, seed=7)
    np.testing.assert_array_equal(ds.y_train, a[0] % 3)  # labels travel with their images


def test_arrays_are_the_datasets_own_splits():
    ds = load_dataset(cfg(source="synthetic", size=[16, 16], samples=100), seed=0, grid=[2, 2])
    arrays = ds.arrays()
    assert set(arrays) == {"x_train", "y_train", "x_val", "y_val", "x_test", "y_test"}
    for name, a in arrays.items():
        own = getattr(ds, name)
        assert a is own and np.shares_memory(a, own)  # no copies: the driver ships them once


def test_fingerprint_tells_data_sets_apart(tmp_path):
    c = cfg(source="synthetic", kind="blobs", size=[16, 16], classes=3, samples=120)
    first = load_dataset(c, seed=0)
    assert load_dataset(c, seed=0).fingerprint() == first.fingerprint()  # same config, second load
    assert load_dataset(c, seed=1).fingerprint() != first.fingerprint()  # other seed: other data and splits
    changed = load_dataset(c, seed=0)
    changed.y_test[0] = (changed.y_test[0] + 1) % 3  # one label differs
    assert changed.fingerprint() != first.fingerprint()
    p = ids_npz(tmp_path)
    a = load_dataset(cfg(source="npz", path=str(p), validation_fraction=0.2), seed=0)
    b = load_dataset(cfg(source="npz", path=str(p), validation_fraction=0.3), seed=0)
    assert a.fingerprint() != b.fingerprint()  # same samples, split differently


def test_tiny_limit_falls_back_to_unstratified_split():
    with pytest.warns(RuntimeWarning, match="not stratified"):
        ds = load_dataset(cfg(source="digits", limit=12), seed=0)
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 12


# ----------------------------------------------------------------- validation


def err(tmp_path, **arrays) -> str:
    p = save_npz(tmp_path / "data.npz", **arrays)
    with pytest.raises(DataError) as info:
        load_dataset(cfg(source="npz", path=str(p)), seed=0, grid=[2, 2])
    msg = str(info.value)
    assert "data.npz" in msg
    return msg


def test_error_missing_path(tmp_path):
    missing = tmp_path / "nope" / "y.npz"
    with pytest.raises(DataError, match=r"dataset path not found: .*nope/y.npz \(dataset.path\)"):
        load_dataset(cfg(source="npz", path=str(missing)), seed=0)


def test_error_not_an_npz(tmp_path):
    p = tmp_path / "data.npz"
    p.write_text("hello")
    with pytest.raises(DataError, match="data.npz: not a readable .npz"):
        load_dataset(cfg(source="npz", path=str(p)), seed=0)


def test_error_missing_array(tmp_path):
    x, _ = make_xy()
    assert "missing array 'y' in" in err(tmp_path, x=x)
    assert "arrays present: x" in err(tmp_path, x=x)
    x, y = make_xy()
    assert "missing array 'y_test'" in err(tmp_path, x=x, y=y, x_test=x)


def test_error_wrong_ndim(tmp_path):
    x, y = make_xy()
    msg = err(tmp_path, x=x[:, 0], y=y)
    assert "'x' must be shaped (N, C, H, W) or (N, C, D, H, W); got (100, 16, 16)" in msg
    assert "x[:, None]" in msg
    assert "labels 'y' must be shaped (N,)" in err(tmp_path, x=x, y=np.eye(4)[y])
    msg = err(tmp_path, x=np.zeros((100, 16, 16, 3), np.uint8), y=y)
    assert "looks channels-last" in msg and "np.moveaxis(x, -1, 1)" in msg


def test_error_wrong_dtypes(tmp_path):
    x, y = make_xy()
    assert "labels 'y' must be integers" in err(tmp_path, x=x, y=np.array([f"c{v}" for v in y]))
    msg = err(tmp_path, x=x, y=y + 0.5)
    assert "labels 'y' must be integers" in msg and "fractional value 0.5" in msg
    assert "'x' must be a real numeric array" in err(tmp_path, x=x.astype(str), y=y)
    assert "'x' must be a real numeric array" in err(tmp_path, x=x.astype(np.complex64), y=y)


def test_error_nan(tmp_path):
    x, y = make_xy()
    x[3, 0, 1, 1] = np.nan
    assert "'x' contains NaN or infinite values (first in sample 3" in err(tmp_path, x=x, y=y)
    x[3, 0, 1, 1] = np.inf
    assert "NaN or infinite" in err(tmp_path, x=x, y=y)


def test_error_label_range(tmp_path):
    x, y = make_xy()
    y[5] = -1
    assert "labels must be integers in [0, K); found -1" in err(tmp_path, x=x, y=y)
    x, y = make_xy(classes=4)
    msg = err(tmp_path, x=x, y=y, class_names=np.array(["a", "b", "c"]))
    assert "labels must be integers in [0, 3); found 3" in msg and "class_names" in msg
    assert "at least 2 classes" in err(tmp_path, x=x, y=np.zeros(100, int))


def test_error_length_mismatch(tmp_path):
    x, y = make_xy(100)
    assert "'y' has 90 labels but 'x' has 100 samples; they must match" in err(tmp_path, x=x, y=y[:90])


def test_error_test_split_mismatch(tmp_path):
    x, y = make_xy(100, c=1)
    xt, yt = make_xy(20, c=3)
    assert "'x_test' has 3 channels but 'x' has 1; they must match" in err(tmp_path, x=x, y=y, x_test=xt, y_test=yt)
    xt, yt = make_xy(20, c=1, spatial=(8, 8))
    assert "'x_test' has spatial shape (8, 8) but 'x' has (16, 16)" in err(tmp_path, x=x, y=y, x_test=xt, y_test=yt)
    xt, yt = make_xy(20)
    assert "'y_test' has 19 labels but 'x_test' has 20" in err(tmp_path, x=x, y=y, x_test=xt, y_test=yt[:19])


def test_error_image_smaller_than_grid(tmp_path):
    x, y = make_xy(40, spatial=(6, 6))
    p = save_npz(tmp_path / "data.npz", x=x, y=y)
    with pytest.raises(DataError) as info:
        load_dataset(cfg(source="npz", path=str(p)), seed=0, grid=[2, 2])
    msg = str(info.value)
    assert "data.npz" in msg and "too small for grid [2, 2]" in msg and "minimum is 4" in msg
    with pytest.raises(DataError, match="data.npz.*2 spatial dimensions.*grid"):
        load_dataset(cfg(source="npz", path=str(p)), seed=0, grid=[1, 1, 1])
    with pytest.raises(DataError, match="digits.*too small for grid"):
        load_dataset(cfg(source="digits", image_size=[8, 8]), seed=0, grid=[4, 4], overlap=1)


def test_data_error_is_value_error(tmp_path):
    """Callers that catch ValueError around loading also catch bad data."""
    assert issubclass(DataError, ValueError)
    with pytest.raises(ValueError, match="dataset path not found"):
        load_dataset(cfg(source="npz", path=str(tmp_path / "missing.npz")), seed=0)


# ------------------------------------------------------- preprocessing/predict


def test_preprocessing_round_trip_and_apply():
    ds = load_dataset(cfg(source="digits", limit=300), seed=0)
    d = ds.preprocessing.to_dict()
    again = Preprocessing.from_dict(json.loads(json.dumps(d)))
    assert again == ds.preprocessing and again.spatial_shape == (32, 32)
    assert d["value_scale"] == "dtype_max" and d["source_values"] == "digits 0..16 / 16"
    raw = np.random.default_rng(0).random((5, 1, 8, 8)).astype(np.float32)
    before = raw.copy()
    out = again.apply(raw)
    assert out.shape == (5, 1, 32, 32) and out.dtype == np.float32
    np.testing.assert_array_equal(raw, before)  # input untouched
    with pytest.raises(DataError, match="3 channels but the model was trained on 1"):
        again.apply(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(DataError, match="preprocessing record is missing mean"):
        Preprocessing.from_dict({"channels": 1, "spatial_shape": [4, 4], "std": [1.0]})


def test_predict_npz_matches_training_preprocessing(tmp_path):
    x, y = make_xy(60, c=2, classes=3)
    xt, yt = make_xy(12, c=2, classes=3, seed=1)
    p = save_npz(tmp_path / "data.npz", x=x, y=y, x_test=xt, y_test=yt)
    ds = load_dataset(cfg(source="npz", path=str(p)), seed=0)
    q = save_npz(tmp_path / "new.npz", x=xt)
    out, names = load_predict_inputs(q, ds.preprocessing)
    np.testing.assert_allclose(out, ds.x_test, atol=1e-6)
    assert names == [f"x[{i}]" for i in range(12)]
    with pytest.raises(DataError, match="new2.npz.*spatial shape \\(8, 8\\) but the model expects \\(16, 16\\)"):
        load_predict_inputs(save_npz(tmp_path / "new2.npz", x=np.zeros((2, 2, 8, 8))), ds.preprocessing)
    with pytest.raises(DataError, match="missing array 'x' in .*new3.npz"):
        load_predict_inputs(save_npz(tmp_path / "new3.npz", images=xt), ds.preprocessing)


def test_predict_images_single_and_folder(tmp_path):
    root = tmp_path / "train"
    for cls in ("a", "b"):
        for i in range(6):
            write_png(root / cls / f"{i}.png", size=(8, 8), seed=i)
    ds = load_dataset(cfg(source="imagefolder", path=str(root)), seed=0)
    prep = Preprocessing.from_dict(ds.preprocessing.to_dict())
    png = root / "a" / "0.png"
    out, names = load_predict_inputs(png, prep)
    assert out.shape == (1, 3, 8, 8) and names == ["0.png"]
    expected = (np.moveaxis(np.asarray(Image.open(png), np.float32) / 255, -1, 0) - np.array(prep.mean)[:, None, None])
    np.testing.assert_allclose(out[0], expected / np.array(prep.std)[:, None, None], atol=1e-5)

    new = tmp_path / "new"
    write_png(new / "z.png", size=(16, 20), mode="L")  # other size and grayscale: converted
    write_png(new / "a.png", size=(8, 8))
    write_png(new / "sub" / "m.png", size=(8, 8))
    (new / "notes.txt").write_text("ignored")
    out, names = load_predict_inputs(new, prep)
    assert out.shape == (3, 3, 8, 8) and names == ["a.png", "sub/m.png", "z.png"]

    with pytest.raises(DataError, match="notes.txt: unsupported input"):
        load_predict_inputs(new / "notes.txt", prep)
    with pytest.raises(DataError, match="empty.*no image files"):
        (tmp_path / "empty").mkdir()
        load_predict_inputs(tmp_path / "empty", prep)
    with pytest.raises(DataError, match="input path not found: .*missing.png"):
        load_predict_inputs(tmp_path / "missing.png", prep)


def test_predict_images_grayscale_model_and_3d_model(tmp_path):
    ds = load_dataset(cfg(source="digits", limit=200), seed=0)
    write_png(tmp_path / "digit.png", size=(8, 8), mode="RGB")
    out, names = load_predict_inputs(tmp_path / "digit.png", ds.preprocessing)
    assert out.shape == (1, 1, 32, 32) and names == ["digit.png"]
    vol = Preprocessing(channels=1, spatial_shape=(8, 8, 8), mean=[0.0], std=[1.0], resize=None)
    with pytest.raises(DataError, match="3D volumes"):
        load_predict_inputs(tmp_path / "digit.png", vol)


def test_image_extensions_match_torchvision():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from ddray.data import IMAGE_EXTENSIONS

    assert tuple(IMAGE_EXTENSIONS) == tuple(IMG_EXTENSIONS)
