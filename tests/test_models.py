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

MODELS = list_models()
SHAPES = {
    2: [(8, 8), (4, 4), (9, 5)],
    3: [(6, 6, 6), (4, 4, 4), (5, 6, 7)],
}


def test_builtin_models_registered():
    assert {"small_cnn", "vgg11", "resnet18"} <= set(MODELS)
    assert MODELS == sorted(MODELS)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_any_tile_size(name, spatial_dims):
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
