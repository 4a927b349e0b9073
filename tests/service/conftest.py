"""A real uvicorn server on a free loopback port, serving the tiny model."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from loraswap.adapters.demo import write_random_adapter
from loraswap.adapters.package import BaseModelRef, TaskKind, build_manifest, write_manifest
from loraswap.base_model.loading import (
    LoadedBaseModel,
    Quantization,
    load_base_model,
    weights_sha256,
)
from loraswap.service.app import create_app
from loraswap.service.settings import Settings


def free_port() -> int:
    """A TCP port nobody listens on right now (for child processes that cannot report the
    port they bound; in-process servers bind port 0 instead)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    """A running server and an HTTP client pointed at it."""

    url: str
    settings: Settings
    client: httpx.Client
    app: Any

    def wait_ready(self, timeout: float = 60) -> dict[str, Any]:
        """Poll /readyz until the model is loaded; its body."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.client.get("/readyz")
            if response.status_code == 200:
                body: dict[str, Any] = response.json()
                return body
            assert response.json()["status"] != "failed", response.text
            time.sleep(0.05)
        raise AssertionError("server did not become ready")


ServerFactory = Callable[..., LiveServer]


@pytest.fixture
def live_server(tiny_base_dir: Path, tmp_path: Path) -> Iterator[ServerFactory]:
    """Factory starting the service (tiny fp32 model) with settings overrides."""
    servers: list[tuple[uvicorn.Server, threading.Thread, httpx.Client]] = []

    def start(*, loader: Callable[[Settings], LoadedBaseModel] | None = None,
              wait: bool = True, **overrides: Any) -> LiveServer:
        """``loader`` replaces the model loader; ``wait=False`` returns before /readyz is
        200 (to observe the loading phase)."""
        values: dict[str, Any] = {
            "base_model": tiny_base_dir, "quantization": Quantization.FP32, "device": "cpu",
            "adapter_dir": tmp_path / "adapters", "max_batch_size": 8, "max_model_len": 256,
            "max_input_tokens": 128,
            "store_uri": (tmp_path / "store").as_uri(), "adapter_cache_dir": tmp_path / "cache",
            "run_log_dir": tmp_path / "run-logs", "dev_mode": True,
            "registry_refresh_seconds": 0.5, **overrides,
        }
        settings = Settings(**values)

        def load(s: Settings) -> LoadedBaseModel:
            return load_base_model(s.base_model, s.quantization, s.device)

        app = create_app(settings, loader=loader or load)
        # Port 0: the kernel picks a free port at bind time (no pick-then-bind race).
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                               log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=url, timeout=60)
        servers.append((server, thread, client))
        live = LiveServer(url=url, settings=settings, client=client, app=app)
        if wait:
            live.wait_ready()
        return live

    yield start
    for server, thread, client in servers:
        client.close()
        server.should_exit = True
        thread.join(timeout=30)


PackageFactory = Callable[..., Path]


@pytest.fixture
def make_package(tiny_base_dir: Path, tmp_path: Path) -> PackageFactory:
    """Factory: a complete causal-lm adapter package (PEFT files + loraswap.json)."""
    base = BaseModelRef(name=tiny_base_dir.name, weights_sha256=weights_sha256(tiny_base_dir))

    def factory(name: str, *, rank: int = 4, seed: int = 0,
                targets: tuple[str, ...] = ("q_proj", "v_proj")) -> Path:
        folder = tmp_path / "packages" / name
        write_random_adapter(tiny_base_dir, folder, rank=rank, targets=targets, seed=seed,
                             scale=1.0)
        write_manifest(folder, build_manifest(folder, task=TaskKind.CAUSAL_LM, base_model=base))
        return folder

    return factory


def upload_files(folder: Path) -> list[tuple[str, tuple[str, bytes]]]:
    """The multipart ``files`` parts of an adapter package folder, for httpx."""
    return [("files", (p.name, p.read_bytes())) for p in sorted(folder.iterdir()) if p.is_file()]
