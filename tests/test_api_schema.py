"""Schemathesis over the OpenAPI schema of the running service: no input makes it answer 5xx.

``DDRAY_FUZZ_EXAMPLES`` examples per operation (default 40: with the service's
ten operations, some hundreds of requests a run, about a minute); ``make fuzz``
runs 1000 per operation. The service runs with ``--max-concurrent-jobs 0``
(jobs are recorded, never run), so the generated configs start no Ray work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service_doubles import Service

EXAMPLES = int(os.environ.get("DDRAY_FUZZ_EXAMPLES", "40"))
MAX_TIME_S = int(os.environ.get("DDRAY_FUZZ_SECONDS", "90"))
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(MAX_TIME_S + 120)]  # a real service in a subprocess; no Ray is started


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    service = Service(
        tmp_path_factory.mktemp("state"), tmp_path_factory.mktemp("data"), extra_args=["--max-concurrent-jobs", "0"],
        env={"DDRAY_MAX_QUEUED_JOBS": "100000"},  # every generated job is kept, so lookups hit real records
    )
    service.start(wait_ray=False, timeout=60)
    yield service
    service.stop()


def test_no_generated_request_gets_a_server_error(svc, tmp_path):
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    cmd = [
        exe, "run", f"{svc.url}/openapi.json",
        "-H", f"Authorization: Bearer {svc.token}",
        "--checks", "not_a_server_error",
        "--max-examples", str(EXAMPLES), "--max-time", str(MAX_TIME_S), "--seed", "1",
        "--workers", "1", "--no-shrink", "--request-timeout", "20",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=MAX_TIME_S + 90)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    assert " passed" in out, out[-3000:]
    assert svc.proc.poll() is None
    assert "Traceback" not in svc.log_text(), svc.log_text()[-3000:]
