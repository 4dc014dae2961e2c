"""ddray: domain-decomposition CNN-DNN training of image classifiers on Ray.

The pure-PyTorch core (config, decomposition, data, models, training,
aggregation, report, predict) imports no Ray; only ``ddray.orchestration``
does, and it is imported only when a job runs.

    import ddray
    config = ddray.load_config("examples/digits.yaml")
    results = ddray.run(config, "runs/digits")
    preds = ddray.TrainedRun("runs/digits").predict_path("new_images/")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ddray.config import (
    AggregationConfig,
    BaselinesConfig,
    ConfigError,
    DatasetConfig,
    DecompositionConfig,
    DNNConfig,
    LocalModelConfig,
    ResourcesConfig,
    RunConfig,
    SearchSpaceEntry,
    TrainingConfig,
    TuneConfig,
    load_config,
    parse_config,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ddray.predict import TrainedRun


def run(config: RunConfig | dict, output_dir: str, run_id: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run a job; ``run_id`` defaults to ``<output folder name>-<UTC time>-<6 hex>`` (see
    ``ddray.orchestration.driver.run`` for the keyword arguments: address, resume, num_cpus, console)."""
    from ddray.orchestration.driver import run as _run

    if isinstance(config, dict):
        config = parse_config(config)
    if config.sweep:
        raise ConfigError("this config has a sweep: section; run it with ddray.run_sweep (or ddray sweep CONFIG)")
    return _run(config, output_dir, run_id, **kwargs)


class Session:
    """Several runs on one Ray, each on the subdomain workers the run before left started.

        with ddray.Session(num_cpus=2) as s:
            a = s.run(config_a, "runs/a")
            b = s.run(config_b, "runs/b")  # its first epoch starts at once: run a's workers are up

    Ray starts (or is joined, ``address``) on entry and an embedded Ray shuts down on exit; between
    runs the idle workers hold their CPUs (and GPUs), and the exit stops them. A run with
    ``compare:`` stops its workers (its baselines need the CPUs); a run asking other resources per
    subdomain, or a Tune search, frees those left for it. ``ddray sweep`` runs the same way.
    """

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None):
        self.address, self.num_cpus = address, num_cpus
        self._ray: Any = None

    def __enter__(self) -> "Session":
        from ddray.orchestration.warm_runs import warm_runs

        self._ray = warm_runs(self.address, num_cpus=self.num_cpus)
        self._ray.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        ray_, self._ray = self._ray, None
        ray_.__exit__(*exc)

    def run(self, config: RunConfig | dict, output_dir: str, run_id: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """:func:`ddray.run` inside the session (keyword arguments: resume, console)."""
        if self._ray is None:
            raise RuntimeError("use the session in a with block: with ddray.Session() as s: s.run(config, output_dir)")
        return run(config, output_dir, run_id, keep_warm=True, **kwargs)


def run_sweep(config: RunConfig | dict, output_dir: str, sweep_id: str | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Run every combination of the config's ``sweep:`` section into ``output_dir`` (docs/sweeps.md) and
    return the sweep table's rows; keyword arguments: address, num_cpus, console. The same folder
    again skips the finished runs."""
    from ddray.orchestration.sweep import run_sweep as _run_sweep

    if isinstance(config, dict):
        config = parse_config(config)
    if not config.sweep:
        raise ConfigError("this config has no sweep: section; run it with ddray.run")
    return _run_sweep(config, output_dir, sweep_id, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "TrainedRun":
        from ddray.predict import TrainedRun

        return TrainedRun
    raise AttributeError(name)


# The public API; every other module is internal and may move (docs/architecture.md).
__all__ = [
    "AggregationConfig",
    "BaselinesConfig",
    "ConfigError",
    "DNNConfig",
    "DatasetConfig",
    "DecompositionConfig",
    "LocalModelConfig",
    "ResourcesConfig",
    "RunConfig",
    "SearchSpaceEntry",
    "Session",
    "TrainedRun",
    "TrainingConfig",
    "TuneConfig",
    "load_config",
    "parse_config",
    "run",
    "run_sweep",
]
