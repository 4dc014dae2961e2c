"""Training recipes (training.schedule, augment, precision, early_stopping_patience): each option does
what docs/recipes.md says, repeats under a seed, survives a resume, and reaches the Ray workers."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from ddray.config import ConfigError, parse_config
from ddray.training.loop import Callback, checkpoint_history, epochs_without_improvement, fit, predict_proba
from ddray.training.recipe import augment_batch
from ddray.training.spec import AugmentSpec, ModelSpec, OptimizerSpec, RecipeSpec, SpecError, TrainingSpec, training_spec


def _images(n=48, size=8, channels=1, classes=3, seed=0, dims=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, *([size] * dims), generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x[: n * 3 // 4], y[: n * 3 // 4], x[n * 3 // 4 :], y[n * 3 // 4 :]


class Recorder(nn.Module):
    """A small real classifier that keeps a copy of every input it sees, by mode (train / eval)."""

    def __init__(self, pixels: int, classes: int = 3):
        super().__init__()
        self.linear = nn.Linear(pixels, classes)
        self.seen: dict[bool, list[torch.Tensor]] = {True: [], False: []}

    def forward(self, x):
        self.seen[self.training].append(x.detach().clone())
        return self.linear(x.flatten(1))


def _recorder(pixels=64):
    torch.manual_seed(0)  # same initial weights every time
    return Recorder(pixels)


def _fit(model, data, recipe, **kw):
    xt, yt, xv, yv = data
    kw = {"epochs": 3, "batch_size": 12, "optimizer": OptimizerSpec("sgd", 0.1), "seed": 7, **kw}
    return fit(model, xt, yt, xv, yv, recipe=recipe, **kw)


# ------------------------------------------------------------------ config and spec


def test_defaults_are_the_plain_loop_and_every_key_reaches_the_spec():
    assert training_spec(parse_config({}), num_classes=3, in_channels=1).recipe == RecipeSpec()
    assert RecipeSpec() == RecipeSpec("none", 10, 0.1, AugmentSpec(False, 0), "fp32", None)
    config = parse_config({"training": {"schedule": "step", "step_size": 2, "gamma": 0.5, "precision": "bf16",
                                        "augment": {"flip": True, "crop_padding": 2}, "early_stopping_patience": 3}})
    want = RecipeSpec("step", 2, 0.5, AugmentSpec(True, 2), "bf16", 3)
    assert training_spec(config, num_classes=3, in_channels=1).recipe == want
    assert training_spec(config, num_classes=3, in_channels=1, baseline="global").recipe == want, "baselines train with the same recipe"
    tuned = training_spec(config, num_classes=3, in_channels=1, overrides={"lr": 0.01, "epochs": 2})
    assert tuned.recipe == want, "Tune overrides keep the recipe"
    assert RecipeSpec().channels_last, "convolutions train channels-last unless the config says otherwise"
    plain = training_spec(parse_config({"training": {"channels_last": False}}), num_classes=3, in_channels=1)
    assert not plain.recipe.channels_last


@pytest.mark.parametrize(
    "training, key",
    [
        ({"schedule": "linear"}, "training.schedule"),
        ({"step_size": 0}, "training.step_size"),
        ({"gamma": 1.5}, "training.gamma"),
        ({"precision": "fp8"}, "training.precision"),
        ({"augment": {"crop_padding": -1}}, "training.augment.crop_padding"),
        ({"augment": {"rotate": True}}, "training.augment.rotate"),
        ({"early_stopping_patience": 0}, "training.early_stopping_patience"),
    ],
)
def test_invalid_recipe_keys_fail_in_the_config_naming_the_key(training, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config({"training": training})


@pytest.mark.parametrize(
    "build, key",
    [
        (lambda: RecipeSpec(schedule="linear"), "training.schedule"),
        (lambda: RecipeSpec(precision="fp64"), "training.precision"),
        (lambda: RecipeSpec(gamma=0.0), "training.gamma"),
        (lambda: RecipeSpec(early_stopping_patience=0), "training.early_stopping_patience"),
        (lambda: AugmentSpec(crop_padding=-2), "training.augment.crop_padding"),
    ],
)
def test_recipe_spec_checks_itself_like_the_config(build, key):
    with pytest.raises(SpecError, match=key.replace(".", r"\.")):
        build()


def test_spec_round_trips_and_reads_specs_saved_before_recipes():
    spec = TrainingSpec(ModelSpec("small_cnn", 0.5, 1, 3), recipe=RecipeSpec("cosine", augment=AugmentSpec(True, 4), precision="fp16"))
    assert TrainingSpec.from_dict(spec.to_dict()) == spec
    assert pickle.loads(pickle.dumps(spec)) == spec
    old = spec.to_dict()
    del old["recipe"]
    assert TrainingSpec.from_dict(old).recipe == RecipeSpec()
    partial = {**spec.to_dict(), "recipe": {"schedule": "step"}}  # a recipe saved before a key existed
    assert TrainingSpec.from_dict(partial).recipe == RecipeSpec("step")


def test_input_the_recipe_cannot_run_on_fails_before_training():
    model = Recorder(64)
    with pytest.raises(SpecError, match=r"training\.augment\.crop_padding 8 .* side 8"):
        _fit(model, _images(size=8), RecipeSpec(augment=AugmentSpec(crop_padding=8)))
    flat = [t.flatten(1) if t.ndim > 1 else t for t in _images()]
    with pytest.raises(SpecError, match=r"training\.augment works on images"):
        _fit(Recorder(64), flat, RecipeSpec(augment=AugmentSpec(flip=True)))
    xt, yt, xv, yv = _images()
    with pytest.raises(SpecError, match=r"training\.early_stopping_patience needs validation data"):
        _fit(Recorder(64), (xt, yt, xv[:0], yv[:0]), RecipeSpec(early_stopping_patience=2))
    assert model.seen == {True: [], False: []}, "nothing trained"


# ------------------------------------------------------------------ schedule


@pytest.mark.parametrize(
    "recipe, expected",
    [
        (RecipeSpec(), lambda e: 0.1),
        (RecipeSpec("cosine"), lambda e: 0.1 * (1 + math.cos(math.pi * (e - 1) / 6)) / 2),
        (RecipeSpec("step", step_size=2, gamma=0.5), lambda e: 0.1 * 0.5 ** ((e - 1) // 2)),
    ],
    ids=["none", "cosine", "step"],
)
def test_schedule_sets_the_lr_of_each_epoch_and_the_history_shows_it(recipe, expected):
    result = _fit(Recorder(64), _images(), recipe, epochs=6)
    assert [h["lr"] for h in result.history] == pytest.approx([expected(e) for e in range(1, 7)])


def test_a_resumed_run_continues_its_schedule_and_ends_where_an_uninterrupted_one_does(tmp_path):
    recipe = RecipeSpec("cosine", precision="fp16")  # the grad scaler's state is in the checkpoint too
    data = _images()
    straight = _recorder()
    whole = _fit(straight, data, recipe, epochs=5, keep_best=False)

    class Interrupt(Callback):
        def on_epoch_end(self, epoch, metrics, model):
            if epoch == 2:
                raise KeyboardInterrupt

    ckpt = tmp_path / "state.ckpt"
    first = _recorder()
    with pytest.raises(KeyboardInterrupt):
        _fit(first, data, recipe, epochs=5, keep_best=False, checkpoint_path=ckpt, callbacks=[Interrupt()])
    assert "scheduler" in torch.load(ckpt, weights_only=True) and "scaler" in torch.load(ckpt, weights_only=True)
    resumed = Recorder(64)
    result = _fit(resumed, data, recipe, epochs=5, keep_best=False, checkpoint_path=ckpt)
    assert result.resumed_from_epoch == 2
    assert [h["lr"] for h in result.history] == pytest.approx([h["lr"] for h in whole.history])
    assert torch.allclose(straight.linear.weight, resumed.linear.weight, atol=1e-6)


# ------------------------------------------------------------------ augmentation


def test_flip_and_crop_change_each_sample_on_its_own_and_match_torchvision():
    from torchvision.transforms.v2 import functional as F

    x = torch.randn(64, 2, 6, 7)
    flipped = augment_batch(x, AugmentSpec(flip=True), torch.Generator().manual_seed(0))
    was_flipped = [torch.equal(a, F.horizontal_flip(b)) for a, b in zip(flipped, x)]
    assert all(was_flipped[i] or torch.equal(flipped[i], x[i]) for i in range(64))
    assert 10 < sum(was_flipped) < 54, "each sample draws its own flip"

    p, g = 2, torch.Generator().manual_seed(1)
    cropped = augment_batch(x, AugmentSpec(crop_padding=p), g)
    assert cropped.shape == x.shape
    padded = F.pad(x, [p])
    windows = {(t, l): F.crop(padded, t, l, 6, 7) for t in range(2 * p + 1) for l in range(2 * p + 1)}
    offsets = [next(k for k, w in windows.items() if torch.equal(w[i], cropped[i])) for i in range(64)]
    assert len(set(offsets)) > 5, "each sample draws its own shift"


def test_volumes_flip_the_last_axis_and_crop_all_three():
    x = torch.randn(32, 1, 4, 5, 6)
    out = augment_batch(x, AugmentSpec(flip=True, crop_padding=1), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, [1] * 6)
    for i in range(32):
        candidates = [padded[i, :, d : d + 4, h : h + 5, w : w + 6] for d in range(3) for h in range(3) for w in range(3)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in candidates)
    result = _fit(Recorder(125), _images(size=5, dims=3), RecipeSpec(augment=AugmentSpec(True, 1)))
    assert len(result.history) == 3, "fit trains on augmented volumes"


def _seen(recipe, seed=7):
    model = _recorder()
    _fit(model, _images(), recipe, seed=seed, epochs=2)
    return model.seen


@pytest.mark.parametrize("augment", [AugmentSpec(flip=True), AugmentSpec(crop_padding=2)], ids=["flip", "crop"])
def test_augment_changes_training_batches_only_and_repeats_under_the_seed(augment):
    plain, augmented = _seen(RecipeSpec()), _seen(RecipeSpec(augment=augment))
    assert len(plain[True]) == len(augmented[True])
    assert any(not torch.equal(a, b) for a, b in zip(plain[True], augmented[True])), "the model sees changed batches"
    assert all(a.shape == b.shape for a, b in zip(plain[True], augmented[True]))
    xv = _images()[2]
    assert all(torch.equal(v, xv) for v in augmented[False]), "validation data is never augmented"
    again = _seen(RecipeSpec(augment=augment))
    assert all(torch.equal(a, b) for a, b in zip(augmented[True], again[True])), "same seed, same batches"
    other = _seen(RecipeSpec(augment=augment), seed=8)
    assert any(not torch.equal(a, b) for a, b in zip(augmented[True], other[True]))


# ------------------------------------------------------------------ precision


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_trains_a_small_cnn_on_cpu_to_a_finite_loss(precision):
    xt, yt, xv, yv = _images(n=64, size=8)
    torch.manual_seed(0)
    model = ModelSpec("small_cnn", 0.25, 1, 3).build()
    autocast_dtypes = set()
    model.register_forward_hook(lambda m, i, o: autocast_dtypes.add(o.dtype) if m.training else None)
    result = fit(model, xt, yt, xv, yv, epochs=2, batch_size=16, optimizer=OptimizerSpec("adam", 0.01),
                 recipe=RecipeSpec(precision=precision))
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in result.history)
    assert autocast_dtypes == {torch.bfloat16 if precision == "bf16" else torch.float16}, "training steps ran under autocast"
    assert all(p.dtype == torch.float32 for p in model.parameters()), "weights stay float32"
    proba = predict_proba(model, xv)
    assert proba.dtype == np.float32 and np.allclose(proba.sum(1), 1, atol=1e-5)


# ------------------------------------------------------------------ memory layout


@pytest.mark.parametrize("dims, augment", [(2, AugmentSpec()), (2, AugmentSpec(flip=True, crop_padding=1)), (3, AugmentSpec())])
def test_channels_last_trains_on_channels_last_batches_to_the_same_model_up_to_rounding(dims, augment):
    xt, yt, xv, yv = _images(n=48, size=6, channels=3, dims=dims)
    layout = torch.channels_last if dims == 2 else torch.channels_last_3d
    trained, seen = {}, {}
    for flag in (False, True):
        torch.manual_seed(0)
        model = ModelSpec("small_cnn", 0.25, 3, 3, spatial_dims=dims).build()
        formats = seen[flag] = set()
        model.register_forward_pre_hook(lambda m, args: formats.add(args[0].is_contiguous(memory_format=layout)))
        result = fit(model, xt, yt, xv, yv, epochs=2, batch_size=8, optimizer=OptimizerSpec("sgd", 0.05), seed=3,
                     recipe=RecipeSpec(augment=augment, channels_last=flag))
        trained[flag] = (result, model)
    assert seen == {False: {False}, True: {True}}, "every training and validation batch in the asked layout"
    (plain, plain_model), (fast, fast_model) = trained[False], trained[True]
    assert [h["val_accuracy"] for h in plain.history] == [h["val_accuracy"] for h in fast.history]
    assert all(math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-4) for a, b in zip(plain.history, fast.history))
    for (name, a), b in zip(plain_model.state_dict().items(), fast_model.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), name
    # the weights load into a model built the default way (predict, transfer)
    fresh = ModelSpec("small_cnn", 0.25, 3, 3, spatial_dims=dims).build()
    fresh.load_state_dict(fast_model.state_dict())
    assert np.allclose(predict_proba(fresh, xv), predict_proba(fast_model, xv), atol=1e-5)


# ------------------------------------------------------------------ early stopping


def test_early_stopping_stops_keeps_the_best_weights_and_stays_stopped_on_resume(tmp_path):
    data = _images()  # random labels: validation accuracy stalls early
    ckpt = tmp_path / "state.ckpt"
    weights = {}

    class Snapshot(Callback):
        def on_epoch_end(self, epoch, metrics, model):
            weights[epoch] = model.linear.weight.detach().clone()

    model = _recorder()
    recipe = RecipeSpec(early_stopping_patience=2)
    result = _fit(model, data, recipe, epochs=30, optimizer=OptimizerSpec("sgd", 0.5), checkpoint_path=ckpt,
                  checkpoint_every=50, callbacks=[Snapshot()])
    run = len(result.history)
    assert run < 30 and [h["epoch"] for h in result.history] == list(range(1, run + 1))
    assert epochs_without_improvement(result.history) == 2, "stopped after 2 epochs without a better validation accuracy"
    assert all(epochs_without_improvement(result.history[:e]) < 2 for e in range(1, run)), "and not before"
    assert result.best_epoch == run - 2
    assert torch.equal(model.linear.weight, weights[run - 2]) and not torch.equal(weights[run - 2], weights[run])
    assert len(checkpoint_history(ckpt)) == run, "the stopping epoch is checkpointed"
    again = _fit(_recorder(), data, recipe, epochs=30, checkpoint_path=ckpt)
    assert len(again.history) == run and again.resumed_from_epoch == run, "a restarted worker does not train on"


def test_a_tune_trial_sends_its_early_stopped_last_epoch_once(tmp_path):
    """Tune gets every epoch once: the epoch at which fit stops early goes out with the trial's artifacts."""
    from ddray.orchestration.tune.trial import _TuneReporter

    reporter = _TuneReporter(0, 30, "fp", tmp_path, "node", patience=2)
    last = []

    class Watch(Callback):
        def on_epoch_end(self, epoch, metrics, model):
            reporter.track(metrics)
            last.append(reporter.is_last(epoch))

    result = _fit(_recorder(), _images(), RecipeSpec(early_stopping_patience=2), epochs=30,
                  optimizer=OptimizerSpec("sgd", 0.5), callbacks=[Watch()])
    assert len(result.history) < 30 and last == [False] * (len(result.history) - 1) + [True]


def test_without_patience_every_epoch_runs():
    result = _fit(Recorder(64), _images(), RecipeSpec(), epochs=5, optimizer=OptimizerSpec("sgd", 1e-9))
    assert len(result.history) == 5


# ------------------------------------------------------------------ through ddray.run on Ray


@pytest.mark.ray
def test_a_run_trains_local_cnns_and_the_global_baseline_with_the_recipe(ray_cluster, tmp_path):
    """The recipe reaches the subdomain actors and the Ray Train baseline: both histories follow cosine."""
    import json

    from ddray.orchestration.driver import run
    from ddray.run_dir import RunDir

    config = parse_config(
        {
            "dataset": {"source": "synthetic", "kind": "count", "samples": 160, "size": [8, 8]},
            "decomposition": {"grid": [1, 2]},
            "local_model": {"name": "small_cnn", "width": 0.25},
            "training": {"epochs": 3, "batch_size": 32, "lr": 0.01, "schedule": "cosine", "augment": {"flip": True}},
            "aggregation": {"methods": ["average"]},
            "compare": ["global"],
        }
    )
    out = tmp_path / "run"
    run(config, out)
    cosine = [0.01 * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)]
    local = checkpoint_history(RunDir(out).state_file(1))  # the subdomain's resumable state
    assert [h["lr"] for h in local] == pytest.approx(cosine)
    assert RunDir(out).load_local_model(1)[1].recipe == RecipeSpec("cosine", augment=AugmentSpec(flip=True))
    baseline = json.loads((out / "baselines" / "global.json").read_text())
    assert [h["lr"] for h in baseline["history"]] == pytest.approx(cosine)
