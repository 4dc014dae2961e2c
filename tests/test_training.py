"""The Ray-free core of training: the loop, resume from checkpoints, and aggregation maths."""

import numpy as np
import pytest
import torch

from ddray.aggregation import accuracy, average_predict, stack_probabilities, train_dnn, vote_predict
from ddray.decomposition import decompose
from ddray.run_dir import RunDir
from ddray.training.local import train_subdomain
from ddray.training.loop import fit, predict_proba
from ddray.training.spec import DNNSpec, ModelSpec, OptimizerSpec, TrainingSpec


def test_average_and_vote_maths():
    # 3 subdomains, 3 classes, 2 samples
    probs = np.array(
        [
            [[0.6, 0.4, 0.0], [0.6, 0.4, 0.0], [0.0, 0.1, 0.9]],  # votes: 0,0,2 -> 0; mean: [.4,.3,.3] -> 0
            [[0.45, 0.55, 0.0], [0.45, 0.55, 0.0], [1.0, 0.0, 0.0]],  # votes 1,1,0 -> 1; mean [.63,.37,0] -> 0
        ],
        dtype=np.float32,
    )
    assert average_predict(probs).tolist() == [0, 0]
    assert vote_predict(probs).tolist() == [0, 1]
    assert accuracy(np.array([0, 1]), np.array([0, 0])) == 0.5


def test_vote_tie_goes_to_higher_mean_probability():
    probs = np.array([[[0.9, 0.1], [0.4, 0.6]]], dtype=np.float32)  # one vote each; class 0 mean .65
    assert vote_predict(probs).tolist() == [0]
    probs = np.array([[[0.55, 0.45], [0.0, 1.0]]], dtype=np.float32)
    assert vote_predict(probs).tolist() == [1]


def test_stack_probabilities_shape():
    stacked = stack_probabilities([np.zeros((5, 3)), np.ones((5, 3))])
    assert stacked.shape == (5, 2, 3) and stacked.dtype == np.float32
    assert (stacked[:, 1] == 1).all()


def _count_probs(n, n_sub, rng):
    """Local 'probabilities' that each reveal only their own bit; the label is the count of bits."""
    bits = rng.integers(0, 2, size=(n, n_sub))
    k = n_sub + 1
    probs = np.full((n, n_sub, k), 0.1, dtype=np.float32)
    probs[..., 0] += (1 - bits) * 0.5
    probs[..., -1] += bits * 0.5
    probs /= probs.sum(-1, keepdims=True)
    return probs, bits.sum(1)


def test_dnn_learns_what_average_and_vote_cannot():
    rng = np.random.default_rng(0)
    probs, labels = {}, {}
    for split, n in (("train", 600), ("val", 150), ("test", 300)):
        probs[split], labels[split] = _count_probs(n, 4, rng)
    outcome = train_dnn(probs, labels, DNNSpec(4, 5, hidden=(32,), epochs=60, lr=0.01, batch_size=64, seed=0))
    assert outcome.test_accuracy > 0.95
    assert accuracy(average_predict(probs["test"]), labels["test"]) < 0.6
    assert accuracy(vote_predict(probs["test"]), labels["test"]) < 0.6


@pytest.mark.parametrize(
    "name, cls, extra",
    [("adam", torch.optim.Adam, {}), ("adamw", torch.optim.AdamW, {}), ("sgd", torch.optim.SGD, {"momentum": 0.8})],
)
def test_optimizer_spec_builds_the_named_optimizer_with_every_setting(name, cls, extra):
    opt = OptimizerSpec(name, 0.1, weight_decay=0.01, momentum=0.8).make(torch.nn.Linear(2, 2).parameters())
    assert type(opt) is cls
    assert opt.defaults["lr"] == 0.1 and opt.defaults["weight_decay"] == 0.01
    for key, value in extra.items():
        assert opt.defaults[key] == value


def test_unknown_optimizer_names_the_setting_and_the_choices():
    with pytest.raises(ValueError, match="training.optimizer to one of adam, adamw, sgd"):
        OptimizerSpec("rmsprop")


def _toy(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(130, 4, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return x[:100], y[:100], x[100:], y[100:]


def _net():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def test_fit_resumes_from_checkpoint_exactly(tmp_path):
    xt, yt, xv, yv = _toy()
    opt = OptimizerSpec("adam", 0.01)
    straight = _net()
    fit(straight, xt, yt, xv, yv, epochs=6, batch_size=16, optimizer=opt, seed=3, keep_best=False)

    ckpt = tmp_path / "state.ckpt"
    first = _net()
    fit(first, xt, yt, xv, yv, epochs=3, batch_size=16, optimizer=opt, seed=3, checkpoint_path=ckpt, keep_best=False)
    resumed = _net()  # a fresh process would start from scratch weights; the checkpoint restores them
    result = fit(resumed, xt, yt, xv, yv, epochs=6, batch_size=16, optimizer=opt, seed=3, checkpoint_path=ckpt, keep_best=False)
    assert result.resumed_from_epoch == 3
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_fit_keeps_best_validation_epoch():
    xt, yt, xv, yv = _toy()
    net = _net()
    result = fit(net, xt, yt, xv, yv, epochs=8, batch_size=16, optimizer=OptimizerSpec("adam", 0.05), seed=0)
    best = max(h["val_accuracy"] for h in result.history)
    assert result.best_val_accuracy == best
    assert result.history[result.best_epoch - 1]["val_accuracy"] == best


def test_train_subdomain_sees_only_its_pixels(tmp_path):
    """A local CNN is trained and evaluated on its own subimage; saved in a run folder, it reloads
    with its spec and predicts exactly what it predicted before."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 1, 12, 12)).astype(np.float32)
    y = rng.integers(0, 2, 40)
    arrays = {f"{a}_{s}": v for s in ("train", "val", "test") for a, v in (("x", x), ("y", y))}
    sub = decompose((12, 12), (2, 2), 2)[1]
    spec = TrainingSpec(ModelSpec("small_cnn", 0.25, in_channels=1, num_classes=2), OptimizerSpec("adam", 0.01), epochs=2, batch_size=16)
    result = train_subdomain(sub, arrays, spec)
    assert result.probabilities["test"].shape == (40, 2)
    assert np.allclose(result.probabilities["val"].sum(1), 1, atol=1e-5)
    from ddray.training.local import fingerprint

    assert result.data_fingerprint == fingerprint(torch.from_numpy(np.ascontiguousarray(sub.extract(x))))
    neighbour = decompose((12, 12), (2, 2), 2)[0]
    assert result.data_fingerprint != fingerprint(torch.from_numpy(np.ascontiguousarray(neighbour.extract(x))))
    run_dir = RunDir(tmp_path / "run")
    run_dir.save_local_model(sub.index, result.model_state, result.spec, result.subdomain_spec)
    state, loaded = run_dir.load_local_model(sub.index)
    assert loaded == spec
    model = loaded.model.build()
    model.load_state_dict(state)
    x_sub = np.ascontiguousarray(sub.extract(x))
    assert np.allclose(predict_proba(model, x_sub), result.probabilities["test"], atol=1e-6)
    assert torch.load(run_dir.local_model(sub.index), weights_only=True)["subdomain"]["bounds"] == sub.bounds


def test_checkpoint_cadence_saves_every_k_epochs_and_the_last(tmp_path):
    """training.checkpoint_every: fewer writes (and uploads), and a resume redoes at most k-1 epochs."""
    from ddray.training.loop import Callback, checkpoint_history

    ckpt = tmp_path / "state.ckpt"
    seen = []

    class Saved(Callback):
        def on_epoch_end(self, epoch, metrics, model):
            seen.append(len(checkpoint_history(ckpt)) if ckpt.exists() else None)

    xt, yt, xv, yv = _toy()
    fit(_net(), xt, yt, xv, yv, epochs=5, batch_size=16, optimizer=OptimizerSpec("adam", 0.01), seed=0,
        checkpoint_path=ckpt, checkpoint_every=3, callbacks=[Saved()])
    assert seen == [None, None, 3, 3, 5]
    resumed = fit(_net(), xt, yt, xv, yv, epochs=6, batch_size=16, optimizer=OptimizerSpec("adam", 0.01), seed=0,
                  checkpoint_path=ckpt, checkpoint_every=3)
    assert resumed.resumed_from_epoch == 5 and len(resumed.history) == 6


def test_a_worker_given_only_its_subdomains_pixels_trains_exactly_as_on_the_whole_data():
    """The driver sends each worker its own cut (subdomain_arrays): same tensors, same model, less memory."""
    from ddray.training.local import subdomain_arrays, subdomain_tensors

    rng = np.random.default_rng(1)
    arrays = {}
    for split, n in (("train", 48), ("val", 16), ("test", 16)):
        arrays[f"x_{split}"] = rng.normal(size=(n, 2, 12, 10)).astype(np.float32)
        arrays[f"y_{split}"] = rng.integers(0, 2, n)
    for sub in decompose((12, 10), (2, 3), 2):
        cut = subdomain_arrays(arrays, sub)
        assert cut["x_train"].shape[2:] == sub.shape and cut["x_train"].flags.c_contiguous
        assert cut["x_train"].nbytes < arrays["x_train"].nbytes / 2
        whole, own = subdomain_tensors(arrays, sub), subdomain_tensors(cut, sub)
        assert all(torch.equal(whole[k], own[k]) for k in whole)
    spec = TrainingSpec(ModelSpec("small_cnn", 0.25, in_channels=2, num_classes=2), OptimizerSpec("adam", 0.01), epochs=1, batch_size=16)
    sub = decompose((12, 10), (2, 3), 2)[4]
    a, b = train_subdomain(sub, arrays, spec), train_subdomain(sub, subdomain_arrays(arrays, sub), spec)
    assert a.data_fingerprint == b.data_fingerprint
    assert np.array_equal(a.probabilities["test"], b.probabilities["test"])
