"""Offline checks of the cluster launcher files (``cluster*.yaml`` at the repository root).

``ray up CONFIG`` (Ray 2.60, ``ray/autoscaler/_private/commands.py::_bootstrap_config``)
does four things with a config before it starts any machine:

1. ``prepare_config(config)``: merges the file with the provider's ``defaults.yaml``
   shipped in the ray wheel (``ray/autoscaler/aws/defaults.yaml``,
   ``ray/autoscaler/gcp/defaults.yaml``; top-level keys of the file replace the
   defaults' keys), prepends ``setup_commands`` to ``head_setup_commands`` and
   ``worker_setup_commands``, checks the docker section and fills each node type's
   ``min_workers`` / ``max_workers``. It only reads files from the ray package.
2. ``provider_cls.fillout_available_node_types_resources(config)``: on AWS asks EC2
   (boto3 and credentials) for the vCPUs / GPUs / memory of each instance type to
   fill missing ``resources``; ``ray up`` only warns when this fails. Our files set
   ``resources`` on every node type, so there is nothing to fill. **Skipped here**:
   it needs credentials and the network (and boto3 / the Google API client).
3. ``validate_config(config)``: ``jsonschema`` validation against
   ``ray/autoscaler/ray-schema.json`` (unknown keys at the top level and inside a
   node type are rejected; node-type ``resources`` must be non-negative integers),
   then: ``cluster_synced_files`` present, ``head_node_type`` one of
   ``available_node_types``, sum of ``min_workers`` <= ``max_workers``.
4. ``provider_cls.bootstrap_config(config)``: creates or looks up IAM roles, key
   pairs, subnets, security groups / service accounts in the cloud. **Skipped
   here**: cloud access.

``validate_ray_up`` below runs steps 1 and 3 with Ray's own functions (private API,
which is why ray is pinned). The schema does not look inside ``node_config`` or most
of ``provider`` (cloud-specific, checked by the cloud at launch), so the remaining
tests check the parts ddray's deployment relies on: no GPU on the head, integer
GPUs on workers, the head starts Ray and then ``ddray serve``, workers join the
head, the pins agree with ``pyproject.toml``, the storage URI matches the cloud,
and every value a user must edit carries a ``# CHANGE`` comment.

No Ray cluster is started and nothing touches the network.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import ray
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILES = sorted(ROOT.glob("cluster*.yaml"))
STORAGE_SCHEME = {"aws": "s3://", "gcp": "gs://"}


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def load(path: Path) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


def validate_ray_up(config: dict[str, Any]) -> dict[str, Any]:
    """What ``ray up`` checks offline: ``prepare_config`` then ``validate_config``."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def head_type(config: dict[str, Any]) -> dict[str, Any]:
    return config["available_node_types"][config["head_node_type"]]


def worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: node
        for name, node in config["available_node_types"].items()
        if name != config["head_node_type"]
    }


def first_worker_name(config: dict[str, Any]) -> str:
    return next(iter(worker_types(config)))


def serve_command(config: dict[str, Any]) -> str:
    commands = [c for c in config["head_start_ray_commands"] if "ddray serve" in c]
    assert len(commands) == 1, "exactly one head_start_ray_commands entry must start `ddray serve`"
    return commands[0]


@pytest.fixture(params=CLUSTER_FILES, ids=_ids(CLUSTER_FILES))
def cluster_file(request) -> Path:
    return request.param


@pytest.fixture
def config(cluster_file: Path) -> dict[str, Any]:
    return load(cluster_file)


def test_both_cluster_files_are_checked():
    names = {p.name for p in CLUSTER_FILES}
    assert {"cluster.yaml", "cluster-gcp.yaml"} <= names


def test_schema_is_the_deployed_ray_version():
    """The schema used here comes from the installed ray; the clusters install the pinned one."""
    pins = pyproject_pins()
    ray_pin = pins["ray"]
    assert ray_pin.startswith("ray[") and "==" in ray_pin
    wanted = ray_pin.split("==", 1)[1].rstrip("*").rstrip(".")
    assert ray.__version__ == wanted or ray.__version__.startswith(wanted + "."), (
        f"installed ray {ray.__version__} does not match the pin {ray_pin}: "
        "the schema checked here is not the one `ray up` will use"
    )


# --- step 1 + 3 of `ray up` ---------------------------------------------------


def test_passes_ray_up_validation(config):
    prepared = validate_ray_up(config)
    # prepare_config gave the head node type max_workers 0 and kept our node types
    # (the provider defaults' node types must not leak in).
    assert set(prepared["available_node_types"]) == set(config["available_node_types"])
    assert head_type(prepared)["max_workers"] == 0


def _top(config: dict[str, Any]) -> dict[str, Any]:
    return config


def _worker(config: dict[str, Any]) -> dict[str, Any]:
    return config["available_node_types"][first_worker_name(config)]


# name -> (section getter, correct key, misspelled key)
TYPOS = {
    "max_worker": (_top, "max_workers", "max_worker"),
    "idle_timeout_minute": (_top, "idle_timeout_minutes", "idle_timeout_minute"),
    "setup_command": (_top, "setup_commands", "setup_command"),
    "node type min_workerz": (_worker, "min_workers", "min_workerz"),
    "node type max_worker": (_worker, "max_workers", "max_worker"),
    "node type resource": (_worker, "resources", "resource"),
}


@pytest.mark.parametrize("typo", list(TYPOS))
def test_misspelled_field_fails_validation(config, typo):
    """A typo in a field name must fail CI, not be silently ignored by `ray up`."""
    section_of, key, misspelled = TYPOS[typo]
    broken = copy.deepcopy(config)
    section = section_of(broken)
    section[misspelled] = section.pop(key)
    with pytest.raises(jsonschema.ValidationError, match="unexpected|required property"):
        validate_ray_up(broken)


def test_misspelled_copy_of_the_file_fails_validation(cluster_file, tmp_path):
    """The same through a file: a copy with `min_workerz` in the worker node type."""
    text = cluster_file.read_text()
    assert text.count("    min_workers: 0\n") == 1
    copy_path = tmp_path / cluster_file.name
    copy_path.write_text(text.replace("    min_workers: 0\n", "    min_workerz: 0\n"))
    validate_ray_up(load(cluster_file))
    with pytest.raises(jsonschema.ValidationError, match="min_workerz"):
        validate_ray_up(load(copy_path))


def test_fractional_node_gpu_fails_validation(config):
    """Fractional GPUs belong in job configs (gpus_per_subdomain), not in node types."""
    broken = copy.deepcopy(config)
    broken["available_node_types"][first_worker_name(broken)]["resources"]["GPU"] = 0.25
    with pytest.raises(jsonschema.ValidationError, match="integer"):
        validate_ray_up(broken)


def test_unknown_head_node_type_fails_validation(config):
    broken = copy.deepcopy(config)
    broken["head_node_type"] = "ddray-head-typo"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_ray_up(broken)


def test_min_workers_above_max_workers_fails_validation(config):
    broken = copy.deepcopy(config)
    broken["available_node_types"][first_worker_name(broken)]["min_workers"] = broken["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        validate_ray_up(broken)


# --- what the deployment relies on ---------------------------------------------


def test_provider_keys_are_known_to_ray(config):
    """Stricter than `ray up`: the schema allows any provider key, so `regoin` would pass there."""
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    known = set(json.loads(schema_path.read_text())["properties"]["provider"]["properties"])
    assert set(config["provider"]) <= known, sorted(set(config["provider"]) - known)
    assert config["provider"]["type"] in STORAGE_SCHEME


def test_head_has_no_gpu(config):
    head = head_type(config)
    assert head["resources"].get("GPU", 0) == 0
    assert "guestAccelerators" not in head["node_config"]
    assert isinstance(head["resources"].get("CPU"), int) and head["resources"]["CPU"] >= 1


def test_workers_have_whole_gpus_and_scale_from_zero(config):
    workers = worker_types(config)
    assert workers, "at least one worker node type"
    for name, node in workers.items():
        gpus = node["resources"].get("GPU")
        assert isinstance(gpus, int) and not isinstance(gpus, bool) and gpus >= 1, name
        assert isinstance(node["resources"].get("CPU"), int) and node["resources"]["CPU"] >= 1, name
        assert node.get("min_workers", 0) == 0, f"{name}: workers should autoscale from 0"
        assert 1 <= node["max_workers"] <= config["max_workers"], name


GCP_FILES = [p for p in CLUSTER_FILES if load(p)["provider"]["type"] == "gcp"]


@pytest.mark.parametrize("gcp_file", GCP_FILES, ids=_ids(GCP_FILES))
def test_gcp_gpu_nodes_attach_their_gpus(gcp_file):
    config = load(gcp_file)
    for name, node in worker_types(config).items():
        accelerators = node["node_config"].get("guestAccelerators", [])
        assert sum(a["acceleratorCount"] for a in accelerators) == node["resources"]["GPU"], name
        # GPU VMs cannot live-migrate; GCE rejects them without TERMINATE. The API
        # field is an object, not a list.
        scheduling = node["node_config"].get("scheduling")
        assert isinstance(scheduling, dict) and scheduling.get("onHostMaintenance") == "TERMINATE", name


def test_head_starts_ray_then_ddray_serve(config):
    commands = config["head_start_ray_commands"]
    ray_start = [i for i, c in enumerate(commands) if "ray start --head" in c]
    assert len(ray_start) == 1
    head_start = commands[ray_start[0]]
    for flag in ("--port=6379", "--object-manager-port=8076",
                 "--autoscaling-config=~/ray_bootstrap_config.yaml", "--dashboard-host=0.0.0.0"):
        assert flag in head_start
    serve = serve_command(config)
    assert commands.index(serve) > ray_start[0], "ddray serve must start after the Ray head"
    assert "nohup ddray serve --host 0.0.0.0 --port 8000 --ray-address auto" in serve  # jobs join this cluster
    for var in ("DDRAY_API_TOKEN=", "DDRAY_DATA_ROOTS=", "DDRAY_STORAGE="):
        assert var in serve
    # A `#` inside the folded command would comment out the rest of the line.
    assert "#" not in serve


def test_storage_uri_matches_cloud(config):
    scheme = STORAGE_SCHEME[config["provider"]["type"]]
    match = re.search(r'DDRAY_STORAGE="([^"]+)"', serve_command(config))
    assert match and match.group(1).startswith(scheme), f"DDRAY_STORAGE must be a {scheme} URI"


def test_workers_join_the_head(config):
    commands = config["worker_start_ray_commands"]
    assert any("ray start --address=$RAY_HEAD_IP:6379" in c for c in commands)
    assert not any("ddray serve" in c for c in commands)


def pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        name = re.split(r"[\[=<>!~ ]", dep, maxsplit=1)[0]
        if name in ("torch", "torchvision", "ray"):
            pins[name] = dep
    return pins


def test_setup_commands_install_pinned_ddray(config):
    setup = "\n".join(config["setup_commands"])
    assert "torch==2.14.1" in setup
    pins = pyproject_pins()
    assert set(pins) == {"torch", "torchvision", "ray"}
    for pin in pins.values():
        assert f'"{pin}"' in setup, f"setup_commands must pin {pin} like pyproject.toml"
    assert "-e ~/ddray" in setup or "ddray @ " in setup


def test_file_mounts_exist_in_the_repository(config):
    """`ray up` runs from the repository root and asserts every local path exists."""
    for remote, local in config["file_mounts"].items():
        assert (ROOT / local).exists(), f"file_mounts {remote}: {local} is missing"


REVIEW_KEYS = ("region:", "availability_zone:", "project_id:", "InstanceType:", "ImageId:",
               "machineType:", "acceleratorType:", "Arn:", "email:", "max_workers:")


def test_values_to_change_are_marked(cluster_file):
    lines = cluster_file.read_text().splitlines()
    comments = "\n".join(line for line in lines if line.lstrip().startswith("#"))
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            continue
        key = stripped.lstrip("- ")
        if key.startswith(REVIEW_KEYS) and not key.startswith("max_workers: 0"):
            assert "# CHANGE" in line, f"{cluster_file.name}:{number} needs a '# CHANGE' comment"
        if "CHANGE-ME" in line and "# CHANGE" not in line:
            # inside a shell command, where no comment fits: a comment line must name the variable
            var = re.search(r"(\w+)=\S*CHANGE-ME", line)
            assert var and re.search(rf"CHANGE.*{var.group(1)}", comments), (
                f"{cluster_file.name}:{number}: placeholder without a CHANGE comment"
            )


# --- GPU drivers and scale-up ---------------------------------------------------

MIN_DRIVER = 580  # torch 2.14.1 wheels are CUDA 13.0 builds


def test_torch_pin_is_a_cuda_13_build():
    """The driver floor below follows from the torch pin: re-check both when the pin moves."""
    assert pyproject_pins()["torch"] == "torch==2.14.1"


def test_stopped_nodes_are_cached(config):
    """Scale-up restarts stopped workers (wheels installed) instead of installing ~4 GB on a new node."""
    assert config["provider"].get("cache_stopped_nodes") is True


def test_gpu_images_have_a_driver_for_torchs_cuda(cluster_file, config):
    lines = cluster_file.read_text().splitlines()
    for name, node in worker_types(config).items():
        if config["provider"]["type"] == "gcp":
            images = [d["initializeParams"]["sourceImage"] for d in node["node_config"]["disks"] if d.get("boot")]
            assert len(images) == 1, name
            driver = re.search(r"nvidia-(\d+)", images[0])
            assert driver and int(driver.group(1)) >= MIN_DRIVER, f"{name}: {images[0]} must be an nvidia-{MIN_DRIVER}+ family"
            key = "sourceImage:"
        else:
            key = "ImageId:"
        # AWS: every ImageId (head and workers share the DLAMI); GCP: the GPU images
        image_lines = [line for line in lines if line.strip().startswith(key) and ("ami-" in line or "nvidia" in line)]
        assert image_lines and all(f"driver >= {MIN_DRIVER}" in line for line in image_lines), (
            f"{cluster_file.name}: every {key} line needs a '# CHANGE' comment naming NVIDIA driver >= {MIN_DRIVER}"
        )


def test_gpu_workers_refuse_an_old_driver(config):
    """Every worker runs the driver check after the shared setup (a per-type list would replace both)."""
    prepared = validate_ray_up(config)
    worker_setup = prepared["worker_setup_commands"]
    install = next(i for i, c in enumerate(worker_setup) if "pip install" in c and "torch==" in c)
    check = next(i for i, c in enumerate(worker_setup) if f"-ge {MIN_DRIVER}" in c)
    assert install < check and "torch.cuda.is_available()" in worker_setup[check]
    for name, node in worker_types(config).items():
        assert "worker_setup_commands" not in node, f"{name}: would drop setup_commands on its nodes"


@pytest.mark.parametrize("driver, ok", [("570.195.03", False), ("", False), ("580.105.08", True), ("595.71.05", True)])
def test_driver_check_command(config, tmp_path, driver, ok):
    """The check itself, with stand-ins for lspci, nvidia-smi and python on PATH."""
    import subprocess

    check = next(c for c in config["worker_setup_commands"] if f"-ge {MIN_DRIVER}" in c)
    fakes = {
        "lspci": "echo '00:1e.0 3D controller: NVIDIA Corporation TU104GL [Tesla T4]'",
        "nvidia-smi": f"[ -n '{driver}' ] && echo '{driver}' || exit 9",
        "python": "exit 0",  # torch sees the GPU
    }
    for name, body in fakes.items():
        (tmp_path / name).write_text(f"#!/bin/sh\n{body}\n")
        (tmp_path / name).chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    proc = subprocess.run(["bash", "-c", check], env=env, capture_output=True, text=True, timeout=30)
    assert (proc.returncode == 0) is ok, proc.stdout + proc.stderr
    if not ok:
        assert f"older than {MIN_DRIVER}" in proc.stdout and "docs/deploy.md" in proc.stdout
    (tmp_path / "lspci").write_text("#!/bin/sh\nexit 0\n")  # no NVIDIA device: nothing to check
    assert subprocess.run(["bash", "-c", check], env=env, capture_output=True, timeout=30).returncode == 0
