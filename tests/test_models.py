"""Model registry, CNN families (2D/3D, tiny and odd tiles), coarse DNN and coherent CNN-DNN."""

from __future__ import annotations

import pytest
import torch

from ddray.decomposition import decompose
from ddray.models import (
    CoherentCNNDNN,
    DNNAggregator,
    UnknownModelError,
    count_parameters,
    create_model,
    list_models,
)
from ddray.models.registry import model_dims


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # torch fits in this process: see conftest

MODELS = list_models()
SHAPES = {
    2: [(8, 8), (4, 4), (9, 5)],
    3: [(6, 6, 6), (4, 4, 4), (5, 6, 7)],
}


def test_builtin_models_registered():
    assert {"small_cnn", "vgg11", "resnet18", "mobilenet_v2"} <= set(MODELS)
    assert MODELS == sorted(MODELS)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_any_tile_size(name, spatial_dims):
    if spatial_dims not in model_dims(name):
        pytest.skip(f"{name} works on {'/'.join(map(str, model_dims(name)))}D inputs only (refused at config time, tested below)")
    torch.manual_seed(0)
    model = create_model(name, in_channels=2, num_classes=3, spatial_dims=spatial_dims, width=0.25)
    for shape in SHAPES[spatial_dims]:
        model.zero_grad()
        x = torch.randn(2, 2, *shape)
        out = model(x)
        assert out.shape == (2, 3), (shape, out.shape)
        out.sum().backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), shape
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, *SHAPES[spatial_dims][1])).shape == (1, 3)


@pytest.mark.parametrize("name", MODELS)
def test_width_shrinks_parameter_count(name):
    counts = [
        count_parameters(create_model(name, in_channels=1, num_classes=10, spatial_dims=2, width=w))
        for w in (1.0, 0.5, 0.25, 0.01)
    ]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == len(counts), counts


def test_count_parameters_trainable_only():
    model = create_model("small_cnn", in_channels=1, num_classes=2, spatial_dims=2, width=0.25)
    total = count_parameters(model)
    model.head.weight.requires_grad_(False)
    assert count_parameters(model) == total - model.head.weight.numel()


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownModelError) as err:
        create_model("foo", in_channels=1, num_classes=2, spatial_dims=2)
    assert isinstance(err.value, ValueError)
    assert str(err.value) == f"unknown model 'foo'; known models: {', '.join(MODELS)}"


def test_bad_spatial_dims():
    with pytest.raises(ValueError, match="spatial_dims"):
        create_model("small_cnn", in_channels=1, num_classes=2, spatial_dims=1)


@pytest.mark.parametrize("hidden", [(), (16,), (16, 8)])
def test_dnn_aggregator_shapes(hidden):
    torch.manual_seed(0)
    dnn = DNNAggregator(num_subdomains=4, num_classes=3, hidden=hidden, dropout=0.1)
    probs = torch.softmax(torch.randn(5, 4, 3), dim=-1)
    assert dnn(probs).shape == (5, 3)
    assert dnn(probs.flatten(1)).shape == (5, 3)
    dnn.eval()
    assert torch.allclose(dnn(probs), dnn(probs.flatten(1)))
    with pytest.raises(ValueError):
        dnn(torch.randn(5, 3, 3))


def _coherent(seed=0, grid=(2, 2), size=(8, 10), classes=3, overlap=1):
    torch.manual_seed(seed)
    subs = decompose(size, grid, overlap=overlap)
    local = [create_model("small_cnn", in_channels=1, num_classes=classes, spatial_dims=len(size), width=0.25) for _ in subs]
    return CoherentCNNDNN(local, subs, DNNAggregator(len(subs), classes, hidden=[8])), subs


def test_coherent_end_to_end_gradients_reach_every_local_model():
    model, subs = _coherent()
    x = torch.randn(3, 1, 8, 10)
    probs = model.local_probabilities(x)
    assert probs.shape == (3, len(subs), 3)
    assert torch.allclose(probs.sum(-1), torch.ones(3, len(subs)))
    out = model(x)
    assert out.shape == (3, 3)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 2])).backward()
    for i, local in enumerate(model.local_models):
        grads = [p.grad for p in local.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), i
        assert any(g.abs().sum() > 0 for g in grads), i
    assert all(p.grad is not None for p in model.dnn.parameters())


def test_coherent_3d():
    model, subs = _coherent(grid=(1, 2, 2), size=(4, 8, 8))
    assert model(torch.randn(2, 1, 4, 8, 8)).shape == (2, 3)


def test_coherent_length_mismatch():
    subs = decompose((8, 8), (2, 2))
    local = [create_model("small_cnn", in_channels=1, num_classes=2, spatial_dims=2, width=0.25)]
    with pytest.raises(ValueError):
        CoherentCNNDNN(local, subs, DNNAggregator(4, 2))


def test_transfer_learning_start_matches_separately_trained_models():
    torch.manual_seed(1)
    subs = decompose((8, 8), (2, 2))
    trained = [create_model("small_cnn", in_channels=1, num_classes=3, spatial_dims=2, width=0.25) for _ in subs]
    x = torch.randn(4, 1, 8, 8)
    for m, s in zip(trained, subs):  # "training": moves BatchNorm running stats off their defaults
        m(s.extract(x))
        m.eval()
    trained_dnn = DNNAggregator(len(subs), 3, hidden=[8]).eval()
    expected = torch.stack([torch.softmax(m(s.extract(x)), 1) for m, s in zip(trained, subs)], 1)

    # a) load state_dicts into a freshly initialised coherent model
    fresh, fresh_subs = _coherent(seed=2, grid=(2, 2), size=(8, 8), overlap=0)
    assert fresh_subs == subs
    for local, m in zip(fresh.local_models, trained):
        local.load_state_dict(m.state_dict())
    fresh.dnn.load_state_dict(trained_dnn.state_dict())
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh.local_probabilities(x), expected, atol=1e-6)
        assert torch.allclose(fresh(x), trained_dnn(expected), atol=1e-6)

    # b) the transfer baseline's start (what a run builds from its saved models) copies the weights:
    # fine-tuning it leaves the trained originals untouched
    from ddray.training.baselines import BaselineJob, TransferStart, build_model
    from ddray.training.spec import DNNSpec, ModelSpec, TrainingSpec

    local = TrainingSpec(ModelSpec("small_cnn", 0.25, in_channels=1, num_classes=3))
    job = BaselineJob("transfer", TrainingSpec(ModelSpec("small_cnn", 1.0, 1, 3)), DNNSpec(len(subs), 3, hidden=(8,)))
    start = TransferStart([local] * len(subs), [m.state_dict() for m in trained], trained_dnn.state_dict())
    tuned = build_model(job, subs, start=start).eval()
    with torch.no_grad():
        assert torch.allclose(tuned.local_probabilities(x), expected, atol=1e-6)
        next(tuned.local_models[0].parameters()).add_(1.0)
        assert torch.allclose(trained[0](subs[0].extract(x)).softmax(1), expected[:, 0], atol=1e-6)


# ------------------------------------------------------------------ mobilenet_v2, stems, heads, width auto


@pytest.mark.parametrize("width, sides", [(1.0, (8,)), (0.5, (8, 32)), (0.25, (13, 32))])
def test_mobilenet_v2_forward_backward_on_small_subimages(width, sides):
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", in_channels=2, num_classes=3, spatial_dims=2, width=width)
    first = model.features[0][0]
    assert first.in_channels == 2 and first.stride == (1, 1)  # small stem: an 8 px tile is not halved first
    for side in sides:
        model.zero_grad()
        out = model(torch.randn(2, 2, side, side))
        assert out.shape == (2, 3)
        out.sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters()), side


def test_mobilenet_v2_imagenet_stem_and_width_multiplier():
    imagenet = create_model("mobilenet_v2", in_channels=3, num_classes=3, spatial_dims=2, width=0.25, stem="imagenet")
    assert imagenet.features[0][0].stride == (2, 2) and imagenet(torch.randn(2, 3, 8, 8)).shape == (2, 3)
    from torchvision.models import mobilenet_v2

    reference = mobilenet_v2(weights=None, width_mult=0.25, num_classes=3)  # torchvision's, at the same width
    assert count_parameters(imagenet) == count_parameters(reference)


def test_resnet_imagenet_stem_shapes():
    torch.manual_seed(0)
    small = create_model("resnet18", in_channels=3, num_classes=4, spatial_dims=2, width=0.25)
    big = create_model("resnet18", in_channels=3, num_classes=4, spatial_dims=2, width=0.25, stem="imagenet")
    x = torch.randn(2, 3, 32, 32)
    assert small.stem(x).shape[-2:] == (32, 32)
    assert big.stem(x).shape[-2:] == (8, 8)  # 7x7 stride-2 conv, then 3x3 stride-2 max pool
    assert big.stem[0].kernel_size == (7, 7)
    for shape in ((32, 32), (5, 7)):
        assert big(torch.randn(2, 3, *shape)).shape == (2, 4)
    vol = create_model("resnet18", in_channels=1, num_classes=4, spatial_dims=3, width=0.25, stem="imagenet")
    assert vol(torch.randn(2, 1, 6, 9, 9)).shape == (2, 4)


def test_vgg_classic_head_shapes():
    torch.manual_seed(0)
    model = create_model("vgg11", in_channels=1, num_classes=5, spatial_dims=2, width=0.25, head="classic")
    linears = [m for m in model.classifier if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128 * 49, 1024), (1024, 1024), (1024, 5)]
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.classifier) == 2
    for side in (4, 32):
        out = model(torch.randn(2, 1, side, side))
        assert out.shape == (2, 5)
        out.sum().backward()
    gap = create_model("vgg11", in_channels=1, num_classes=5, spatial_dims=2, width=0.25)
    assert count_parameters(model) > 5 * count_parameters(gap)


def test_default_options_keep_todays_architectures():
    for name, option in (("resnet18", {"stem": "small"}), ("vgg11", {"head": "gap"})):
        torch.manual_seed(0)
        default = create_model(name, in_channels=1, num_classes=3, spatial_dims=2, width=0.25)
        torch.manual_seed(0)
        explicit = create_model(name, in_channels=1, num_classes=3, spatial_dims=2, width=0.25, **option)
        a, b = default.state_dict(), explicit.state_dict()
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "section, grid, words",
    [
        ({"name": "small_cnn", "stem": "imagenet"}, [2, 2], ["local_model.stem", "resnet18", "mobilenet_v2", "small_cnn"]),
        ({"name": "resnet18", "head": "classic"}, [2, 2], ["local_model.head", "vgg11", "resnet18"]),
        ({"name": "mobilenet_v2"}, [1, 2, 2], ["local_model.name", "mobilenet_v2", "2D images only", "3D volumes"]),
        ({"name": "vgg11", "head": "classic"}, [1, 2, 2], ["local_model.head", "classic", "2D images only"]),
        ({"name": "resnet18", "stem": "huge"}, [2, 2], ["local_model.stem", "small", "imagenet"]),
        ({"width": "half"}, [2, 2], ["local_model.width", "auto"]),
    ],
)
def test_invalid_model_options_fail_at_config_time_naming_the_key(section, grid, words):
    from ddray.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config({"local_model": section, "decomposition": {"grid": grid}})
    for word in words:
        assert word in str(err.value)


def test_invalid_options_fail_in_the_model_spec_and_registry_too():
    from ddray.training.spec import ModelSpec, SpecError

    with pytest.raises(SpecError, match="local_model.stem"):
        ModelSpec("vgg11", 0.5, 1, 3, stem="imagenet")
    with pytest.raises(SpecError, match="2D images only"):
        ModelSpec("mobilenet_v2", 0.5, 1, 3, spatial_dims=3)
    with pytest.raises(ValueError, match="local_model.head"):
        create_model("small_cnn", in_channels=1, num_classes=3, spatial_dims=2, head="classic")


@pytest.mark.parametrize("grid, width", [([1, 1], 1.0), ([2, 2], 0.5), ([4, 4], 0.25), ([1, 2], 0.7071)])
def test_width_auto_is_one_over_sqrt_subdomains_and_saved_resolved(grid, width):
    from ddray.config import parse_config
    from ddray.training.spec import TrainingSpec, training_spec

    config = parse_config({"local_model": {"width": "auto"}, "decomposition": {"grid": grid}})
    assert config.local_model.width == "auto"  # the config keeps what the user wrote
    spec = training_spec(config, num_classes=3, in_channels=1)
    assert spec.model.width == width
    assert TrainingSpec.from_dict(spec.to_dict()).model.width == width  # saved beside the weights, resolved
    assert training_spec(config, num_classes=3, in_channels=1, baseline="global").model.width == 1.0


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "vgg11", "mobilenet_v2"])
def test_parameter_summary_gives_the_local_to_global_ratio(name):
    from ddray.config import parse_config
    from ddray.training.baselines import parameter_summary
    from ddray.training.spec import training_spec

    config = parse_config({"local_model": {"name": name, "width": "auto"}, "decomposition": {"grid": [4, 4]}})
    local = training_spec(config, num_classes=10, in_channels=3).model
    one = count_parameters(local.build())
    assert local.parameter_count() == one  # the meta-device count is the real one
    out = parameter_summary(config, num_classes=10, in_channels=3, local_parameters=[one] * 16)
    global_params = count_parameters(create_model(name, in_channels=3, num_classes=10, spatial_dims=2))
    assert out["global_model"] == global_params and out["local_total"] == 16 * one
    assert out["local_to_global"] == round(16 * one / global_params, 4) and out["local_width"] == 0.25 and out["width_auto"]
    if name != "mobilenet_v2":  # its 1280-channel last conv does not shrink with width (torchvision's rule)
        assert 0.5 < out["local_to_global"] < 1.5, out


def test_specs_saved_before_the_options_still_load():
    from ddray.training.spec import DNNSpec, ModelSpec, TrainingSpec

    spec = TrainingSpec(ModelSpec("resnet18", 0.25, 1, 3))
    old = spec.to_dict()
    del old["model"]["stem"], old["model"]["head"]
    assert TrainingSpec.from_dict(old) == spec
    assert TrainingSpec.from_dict(old).model.build()(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    dnn = DNNSpec(4, 3, hidden=(8,))
    old_dnn = dnn.to_dict()
    del old_dnn["fit_on"]
    assert DNNSpec.from_dict(old_dnn) == dnn and dnn.fit_on == "train"


def test_a_users_own_family_registers_validates_and_builds():
    from ddray.config import ConfigError, parse_config
    from ddray.models import register_model
    from ddray.models.registry import _FAMILIES

    @register_model("tiny_linear_test", spatial_dims=(2,), options={"act": {"relu": (2,), "tanh": (2,)}})
    def tiny(*, in_channels: int, num_classes: int, spatial_dims: int, width: float = 1.0, act: str = "relu"):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))

    try:
        assert "tiny_linear_test" in list_models()
        model = create_model("tiny_linear_test", in_channels=1, num_classes=3, spatial_dims=2, act="tanh")
        assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 3)
        parse_config({"dataset": {"source": "digits"}, "local_model": {"name": "tiny_linear_test"}})
        with pytest.raises(ConfigError, match="3D volumes"):  # its declared dimensions are checked at config time
            parse_config({"dataset": {"source": "synthetic", "size": [8, 8, 8]}, "decomposition": {"grid": [2, 2, 2]},
                          "local_model": {"name": "tiny_linear_test"}})
        register_model("tiny_linear_test", spatial_dims=(2,))(tiny)  # the same function again (a module reload)
        with pytest.raises(ValueError, match="already registered by ddray.models.small_cnn:small_cnn"):
            register_model("small_cnn")(tiny)
    finally:
        _FAMILIES.pop("tiny_linear_test", None)
