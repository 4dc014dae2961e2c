"""A real S3-compatible server for tests: moto's threaded server on a free loopback port.

    def test_x(s3):                     # the module-scoped fixture of tests/conftest.py
        s3.create_bucket("ddray-runs")
        subprocess.run([...], env={**os.environ, **s3.env})   # a child process reaches it
        with s3.environ():                                  # and so does this process (pyarrow, boto3)
            ddray.storage.list_files("s3://ddray-runs/x")

pyarrow and boto3 both read the standard ``AWS_ENDPOINT_URL``; a Ray started
inside a process that has these variables passes them on to its workers.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Iterator

from api.cluster import free_port


class S3Server:
    """moto's S3 server in a thread of this process; ``env`` is what a client needs to reach it."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # never wait for instance metadata credentials
        }
        self._server = None

    def start(self) -> "S3Server":
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request in test output
        self._server = ThreadedMotoServer(port=self.port, ip_address="127.0.0.1", verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self):
        """A boto3 S3 client of this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name`` (3+ characters, S3 rules) if missing; return ``s3://name``."""
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if name not in existing:
            client.create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key of ``bucket`` under ``prefix``, sorted (read with boto3, independently of ddray)."""
        paginator = self.client().get_paginator("list_objects_v2")
        out: list[str] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            out.extend(obj["Key"] for obj in page.get("Contents", []))
        return sorted(out)

    @contextmanager
    def environ(self) -> Iterator[dict[str, str]]:
        """Set ``env`` in ``os.environ`` for in-process clients; restore the previous values after."""
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            yield self.env
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
