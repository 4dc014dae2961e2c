"""Upper bounds on what one job may ask for, each liftable by a ``DDRAY_MAX_*`` environment variable.

A config is data, and data can be absurd (``epochs: 1e9``, a 1000x1000 grid,
a 10^12-pixel image): without bounds one request holds a cluster forever or
exhausts memory before anything useful fails. The defaults fit real GPU jobs
(CIFAR-scale to CT volumes, 8x8x8 grids, long trainings); a user with a
bigger job lifts a bound on purpose, e.g. ``DDRAY_MAX_EPOCHS=50000``. The
same bounds apply to ``ddray run``, the Python API and the REST service (set
them in the service's environment).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Limits(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DDRAY_MAX_", extra="ignore")

    epochs: int = Field(10_000, ge=1, description="training.epochs, baselines.epochs, aggregation.dnn.epochs, tuned epochs")
    subdomains: int = Field(4_096, ge=1, description="product of decomposition.grid")
    image_pixels: int = Field(256 * 1024 * 1024, ge=1, description="pixels (voxels) of one input: H*W or D*H*W of image_size / size")
    samples: int = Field(10_000_000, ge=1, description="dataset.samples (synthetic) and dataset.limit")
    hidden: int = Field(65_536, ge=1, description="width of each aggregation.dnn.hidden layer")
    hidden_layers: int = Field(64, ge=1, description="number of aggregation.dnn.hidden layers")
    trials: int = Field(10_000, ge=1, description="tune.num_samples (trials per subdomain)")
    batch_size: int = Field(65_536, ge=1, description="every batch_size")
    cpus_per_subdomain: float = Field(1_024, gt=0, description="resources.cpus_per_subdomain")
    gpus_per_subdomain: float = Field(64, gt=0, description="resources.gpus_per_subdomain")
    workers: int = Field(1_024, ge=1, description="resources.num_workers")
    retries: int = Field(100, ge=0, description="resources.max_retries")
    channels: int = Field(1_024, ge=1, description="dataset.channels")
    sweep_runs: int = Field(1_000, ge=1, description="combinations (runs) of one sweep:")
    dataset_bytes: int = Field(32 * 1024**3, ge=1, description="a data set's estimated size in memory (float32), from headers before loading")


def env_name(field: str) -> str:
    return f"DDRAY_MAX_{field.upper()}"
