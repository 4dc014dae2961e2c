"""Schemathesis over the OpenAPI schema of the running service: no input makes it answer 5xx.

The service runs with ``--max-concurrent-jobs 0`` (jobs are recorded, never
run), so the thousands of generated configs start no Ray work.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from api.testing import Service

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]  # "ray": slow marker of this repo (no Ray is started here)


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    service = Service(tmp_path_factory.mktemp("state"), tmp_path_factory.mktemp("data"), extra_args=["--max-concurrent-jobs", "0"])
    service.start(wait_ray=False, timeout=60)
    yield service
    service.stop()


def test_no_generated_request_gets_a_server_error(svc, tmp_path):
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    cmd = [
        exe, "run", f"{svc.url}/openapi.json",
        "-H", f"Authorization: Bearer {svc.token}",
        "--checks", "not_a_server_error",
        "--max-examples", "10", "--max-time", "30", "--seed", "1",
        "--workers", "1", "--no-shrink", "--request-timeout", "20",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    assert " passed" in out, out[-3000:]
    assert svc.proc.poll() is None
    assert "Traceback" not in svc.log_text(), svc.log_text()[-3000:]
