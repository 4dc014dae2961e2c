"""Feasibility of per-subdomain resource requests, checked before any actor is created (no Ray needed)."""

import pytest

from ddray.errors import ResourceError
from ddray.orchestration.cluster import NodeResources, check_feasible, slots_per_node

CPU_NODE = NodeResources("a" * 16, cpus=2, gpus=0)
GPU_NODE = NodeResources("b" * 16, cpus=4, gpus=1)


def test_slots_count_fractional_gpus():
    assert slots_per_node(GPU_NODE, cpus=1, gpus=0.25) == 4
    assert slots_per_node(GPU_NODE, cpus=2, gpus=0.25) == 2
    assert slots_per_node(CPU_NODE, cpus=0.5, gpus=0) == 4
    assert check_feasible(1, 0.5, [CPU_NODE, GPU_NODE]) == 2  # the CPU-only node hosts none


def test_gpu_request_on_cpu_cluster_names_the_fix():
    with pytest.raises(ResourceError) as err:
        check_feasible(1, 0.25, [CPU_NODE])
    text = str(err.value)
    assert "gpus_per_subdomain=0.25" in text and "GPU 0" in text and "gpus_per_subdomain: 0" in text


def test_too_many_cpus_per_subdomain():
    with pytest.raises(ResourceError, match="lower resources.cpus_per_subdomain"):
        check_feasible(8, 0, [CPU_NODE, GPU_NODE])
