"""``ddray suggest``: a complete, commented, runnable config from a ``dataset:`` section and the resources.

Pure parts: :func:`inspect_data` (size, channels, classes, samples), :func:`choose_grid`,
:func:`choose_resources`, :func:`predict_wall` and :func:`render` (the YAML with a comment on every
choice). One part measures: :func:`time_candidate` trains a few real steps of a candidate local
model with the real training loop (:func:`ddray.training.loop.fit`) on a subdomain-sized input, with
as many threads as a subdomain will get. The rules (docs/suggest.md):

- Grid: subdomains of about ``TARGET_SIDE`` pixels per axis (16: small_cnn pools twice, leaving 4 px
  tiles), at most ``MAX_PER_AXIS`` cuts per axis (the papers use 2x2 to 4x4 for images, 4x4x2 for
  CT volumes), at least two subdomains. Overlap 2 px when subdomains are 16 px or more, else 1.
- Resources: all subdomains at once when the CPUs allow, else one CPU each in waves; with GPUs a
  fraction of a GPU each (1, 1/2, 1/4 ...), so that every subdomain gets a share.
- Local model: small_cnn at the widths ``WIDTHS`` (and resnet18 at 0.25 for subdomains of 32 px or
  more) are timed; the widest up to :func:`width_cap` whose predicted wall fits the time budget with at
  least ``MIN_EPOCHS`` epochs wins (local CNNs need fewer channels than the global model: paper 2 of PAPERS.md).
- Epochs: as many as fit ``--hours`` (at most ``MAX_EPOCHS``); without ``--hours``, ``DEFAULT_EPOCHS``.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from ddray.config import ConfigError, DatasetConfig, RunConfig, parse_config

TARGET_SIDE = 16
MIN_SIDE = 4
MAX_PER_AXIS = (2, 4, 4)  # 3D: depth, rows, cols; 2D uses the last two
WIDTHS = (0.25, 0.5, 1.0)
MIN_EPOCHS, DEFAULT_EPOCHS, MAX_EPOCHS = 5, 20, 200
STARTUP_S = 20.0  # Ray start, worker processes importing torch, data in the object store (measured: 10-25 s on 2 loaded cores)
DNN_S = 5.0  # the coarse DNN: N x K inputs, 60 epochs
TIMED_STEPS = 6


class SuggestError(ConfigError):
    """Input suggest cannot work from; the message names the key."""


@dataclass
class DataFacts:
    shape: tuple[int, ...]  # spatial
    channels: int
    classes: int
    train: int
    val: int
    test: int


@dataclass
class Candidate:
    model: str
    width: float
    step_s: float  # one training step of one batch
    epoch_s: float = 0.0
    epochs: int = 0
    wall_s: float = 0.0
    fits: bool = True


@dataclass
class Suggestion:
    config: RunConfig
    text: str
    predicted_wall_s: float
    facts: DataFacts
    candidates: list[Candidate] = field(default_factory=list)


def dataset_section(raw: Any) -> dict:
    """The ``dataset:`` mapping of a config (a dict), validated; errors name ``dataset.<key>``."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("dataset"), Mapping):
        raise SuggestError("suggest needs a config with a 'dataset:' section (e.g. dataset: {source: digits, image_size: [64, 64]})")
    from pydantic import ValidationError

    from ddray.config import format_validation_error

    data = dict(raw["dataset"])
    try:
        DatasetConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err).replace("\n  ", "\n  dataset.")) from None
    if data.get("source") == "synthetic" and data.get("kind", "count") == "count" and not data.get("cells"):
        data["cells"] = [2] * len(data.get("size") or [16, 16])  # else the labels would follow the suggested grid
    return data


def inspect_data(dataset: Mapping[str, Any], seed: int = 0) -> DataFacts:
    """Load the data once (the same loader and checks as a run) and read off what the choices need."""
    import tempfile

    from ddray.data import load_dataset
    from ddray.storage import is_uri, local_copy

    cfg = DatasetConfig.model_validate(dict(dataset))
    with tempfile.TemporaryDirectory(prefix="ddray-suggest-") as cache:
        if cfg.path and is_uri(cfg.path):  # fetched once, as the driver does
            cfg = cfg.model_copy(update={"path": str(local_copy(cfg.path, cache))})
        ds = load_dataset(cfg, seed=seed)
    return DataFacts(ds.spatial_shape, ds.in_channels, ds.num_classes, len(ds.y_train), len(ds.y_val), len(ds.y_test))


def choose_grid(shape: tuple[int, ...]) -> tuple[list[int], int]:
    """(grid, overlap) for a spatial shape: subdomains of about TARGET_SIDE px, see the module docstring."""
    caps = MAX_PER_AXIS[-len(shape):]
    grid = [max(1, min(cap, round(s / TARGET_SIDE), s // MIN_SIDE)) for s, cap in zip(shape, caps)]
    if math.prod(grid) < 2:  # too small to cut by the rule: still two pieces along the longest axis that allows it
        axis = max(range(len(shape)), key=lambda a: shape[a])
        if shape[axis] >= 2 * MIN_SIDE:
            grid[axis] = 2
    side = min((s // g for s, g in zip(shape, grid) if g > 1), default=0)  # overlap only matters where there is a cut
    return grid, (2 if side >= 16 else 1 if side >= 2 * MIN_SIDE else 0)


def choose_resources(n: int, cpus: int, gpus: float) -> tuple[float, float, int]:
    """(cpus_per_subdomain, gpus_per_subdomain, subdomains running at once)."""
    cpus = max(1, int(cpus))
    if gpus > 0:
        share = 1.0 if n <= gpus else 1.0 / 2 ** math.ceil(math.log2(n / gpus))  # 1, 1/2, 1/4, ...
        share = max(share, 0.125)
        slots = min(int(gpus / share + 1e-9), cpus)
        return float(max(1, cpus // max(1, min(n, slots)))), share, max(1, min(n, slots))
    per = max(1, cpus // n)
    return float(per), 0.0, max(1, min(n, cpus // per))


def width_cap(n: int) -> float:
    """The widest local width worth training: local CNNs see 1/n of the image, so need fewer channels
    than the global model (2/sqrt(n): full width up to 4 subdomains, half at 16)."""
    return max(min(WIDTHS), min(1.0, 2.0 / math.sqrt(n)))


def predict_wall(epoch_s: float, epochs: int, n: int, slots: int) -> float:
    """Local phase in waves of ``slots`` subdomains, plus start-up and the DNN."""
    waves = math.ceil(n / max(1, slots))
    return STARTUP_S + waves * epochs * epoch_s + DNN_S


def time_candidate(model: str, width: float, facts: DataFacts, sub_shape: list[int], batch: int, threads: int, use_gpu: bool) -> float:
    """Seconds per training step of ``model`` at ``width`` on a subdomain-sized batch, with the real loop."""
    import torch

    from ddray.training.loop import fit
    from ddray.training.spec import ModelSpec, OptimizerSpec

    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        g = torch.Generator().manual_seed(0)
        shape = (facts.channels, *sub_shape)
        y_all = torch.arange(batch * TIMED_STEPS) % facts.classes
        x_all = torch.randn((batch * TIMED_STEPS, *shape), generator=g)
        net = ModelSpec(model, width, facts.channels, facts.classes, len(sub_shape)).build()
        kw = dict(epochs=1, batch_size=batch, optimizer=OptimizerSpec("adam", 0.003), device=device, keep_best=False)
        fit(net, x_all[:batch], y_all[:batch], x_all[:batch], y_all[:batch], **kw)  # warm-up: first-step allocations
        started = time.perf_counter()
        fit(net, x_all, y_all, x_all[:batch], y_all[:batch], **kw)
        return (time.perf_counter() - started) / (TIMED_STEPS + 0.5)  # + the validation pass of one batch (~half a step)
    finally:
        torch.set_num_threads(previous)


def suggest(raw: Mapping[str, Any], *, cpus: int | None = None, gpus: float = 0.0, hours: float | None = None,
            seed: int = 0) -> Suggestion:
    """The whole suggestion: inspect, choose, time the candidates, pick, render, validate."""
    if cpus is not None and cpus < 1:
        raise SuggestError(f"--cpus must be >= 1, got {cpus}")
    if gpus < 0:
        raise SuggestError(f"--gpus must be >= 0, got {gpus}")
    if hours is not None and not (hours > 0 and math.isfinite(hours)):
        raise SuggestError(f"--hours must be > 0, got {hours}")
    dataset = dataset_section(raw)
    cpus = int(cpus or os.cpu_count() or 1)
    facts = inspect_data(dataset, seed)
    grid, overlap = choose_grid(facts.shape)
    n = math.prod(grid)
    sub_shape = [s // g + (2 * overlap if g > 1 else 0) for s, g in zip(facts.shape, grid)]
    cpu_each, gpu_each, slots = choose_resources(n, cpus, gpus)
    batch = int(min(64, max(16, facts.train // 20)))
    steps = math.ceil(facts.train / batch) + math.ceil(facts.val / batch) / 2  # + validation (forward only)
    budget_s = hours * 3600.0 if hours is not None else None
    options = [("small_cnn", w) for w in WIDTHS] + ([("resnet18", 0.25)] if min(sub_shape) >= 32 else [])
    candidates = []
    for model, width in options:
        c = Candidate(model, width, time_candidate(model, width, facts, sub_shape, batch, int(cpu_each), gpu_each > 0))
        c.epoch_s = c.step_s * steps
        if budget_s is None:
            c.epochs = DEFAULT_EPOCHS
        else:
            room = budget_s - predict_wall(0.0, 0, n, slots)
            c.epochs = int(min(MAX_EPOCHS, max(1, room // max(1e-9, math.ceil(n / slots) * c.epoch_s))))
            c.fits = room > 0 and c.epochs >= MIN_EPOCHS
        c.wall_s = predict_wall(c.epoch_s, c.epochs, n, slots)
        candidates.append(c)
    cap = width_cap(n)
    fitting = [c for c in candidates if c.fits and c.width <= cap]
    # the widest fitting small_cnn under the cap (families are compared by time only; accuracy is not measured here)
    chosen = max(fitting, key=lambda c: (c.model == "small_cnn", c.width)) if fitting else min(candidates, key=lambda c: c.step_s)
    text = render(dataset, facts, grid, overlap, chosen, candidates, batch, cpu_each, gpu_each, slots, cpus, gpus, hours)
    import yaml

    config = parse_config(yaml.safe_load(text))
    return Suggestion(config, text, chosen.wall_s, facts, candidates)


def _yaml_value(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def render(dataset: Mapping[str, Any], facts: DataFacts, grid: list[int], overlap: int, chosen: Candidate,
           candidates: list[Candidate], batch: int, cpu_each: float, gpu_each: float, slots: int,
           cpus: int, gpus: float, hours: float | None) -> str:
    """The suggested config as YAML, a comment on every choice."""
    n = math.prod(grid)
    sub = [s // g for s, g in zip(facts.shape, grid)]
    waves = math.ceil(n / slots)
    timed = "; ".join(f"{c.model}@{c.width:g}: {c.step_s * 1000:.0f} ms/step, {c.epoch_s:.1f} s/epoch"
                      + ("" if c.fits else " (does not fit)") for c in candidates)
    budget = f"--hours {hours:g} ({hours * 3600:.0f} s)" if hours is not None else "no --hours given"
    lines = [
        "# ddray config suggested by `ddray suggest` (docs/suggest.md). Every choice is explained; edit freely.",
        f"# data: {list(facts.shape)} {'volumes' if len(facts.shape) == 3 else 'images'}, {facts.channels} channel(s), "
        f"{facts.classes} classes, {facts.train} train / {facts.val} val / {facts.test} test samples",
        f"# resources: {cpus} CPU(s), {gpus:g} GPU(s); time budget: {budget}",
        f"# predicted wall time: {chosen.wall_s:.0f} s = start-up {STARTUP_S:.0f} s + {waves} wave(s) x {chosen.epochs} epochs x "
        f"{chosen.epoch_s:.2f} s + DNN {DNN_S:.0f} s",
        "dataset:",
        *[f"  {k}: {_yaml_value(v)}" for k, v in dataset.items()],
        "decomposition:",
        f"  # subdomains of about {TARGET_SIDE} px per axis ({sub} here), at most {list(MAX_PER_AXIS[-len(grid):])} cuts: "
        f"{n} local CNNs",
        f"  grid: {grid}",
        f"  # neighbours share {overlap} px, so features on a cut are seen whole by one subdomain",
        f"  overlap: {overlap}",
        "local_model:",
        f"  # timed with the real training loop on a {facts.channels}x{'x'.join(map(str, sub))} (+ overlap) input, "
        f"batch {batch}, {int(cpu_each)} thread(s): {timed}",
        f"  # the widest candidate up to width {width_cap(n):g} (2/sqrt({n} subdomains): local CNNs need fewer channels) "
        f"that fits the budget with >= {MIN_EPOCHS} epochs",
        f"  name: {chosen.model}",
        f"  width: {chosen.width:g}",
        "training:",
        f"  # {'as many epochs as fit the time budget' if hours is not None else 'a default; give --hours to fit epochs to a budget'}"
        f" (at most {MAX_EPOCHS})",
        f"  epochs: {chosen.epochs}",
        "  # train samples / 20, kept between 16 and 64",
        f"  batch_size: {batch}",
        "  lr: 0.003",
        "  optimizer: adam",
        "aggregation:",
        "  # the DNN combines the local class probabilities; average and vote are cheap comparisons",
        "  methods: [dnn, average, vote]",
        "  dnn: {hidden: [64], epochs: 60}",
        "resources:",
        f"  # {slots} subdomain(s) at once on {cpus} CPU(s){f' and {gpus:g} GPU(s)' if gpus else ''}: {waves} wave(s)",
        f"  cpus_per_subdomain: {cpu_each:g}",
        f"  gpus_per_subdomain: {gpu_each:g}",
        "seed: 0",
    ]
    return "\n".join(lines) + "\n"
