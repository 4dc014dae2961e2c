"""Shared fixtures: one small local Ray for the whole session, fixed seeds."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("DDRAY_PLAIN_PROGRESS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(autouse=True)
def _seed():
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture()
def one_torch_thread():
    """One torch thread for modules that fit models in the test process: on a shared 2-core machine two
    threads spin against each other (a 0.5 s DNN fit took 37 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ray_cluster():
    """A 2-CPU local Ray with one logical (fake) GPU, shared by every Ray test of the session."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            num_gpus=1,
            include_dashboard=False,
            object_store_memory=200 * 1024**2,
            namespace="ddray-tests",
            logging_level="WARNING",
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def s3():
    """A real S3-compatible server (moto) for the test module: ``s3.create_bucket(name)``, ``s3.env``, ``s3.environ()``."""
    from s3server import S3Server

    with S3Server() as server:
        yield server
