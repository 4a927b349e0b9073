"""Drift on vs off, side by side: latency and throughput of a seq-cls adapter over HTTP.

Two ``loraswap serve`` processes share one store: drift off (A) and drift on (B), with the
tenant's capture policy from ``--capture`` (default: every prediction). The same requests
go to A and B in alternating rounds (A, B, A, B, ...), so load from other users of a
shared machine hits both alike. Each request is one SST-2 sentence, sent by 4 concurrent
clients. Bounded: ``--rounds`` × ``--per-round``
requests per server.

Usage: loraswap bench drift --package PKG [--rounds 6] [--per-round 40]
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

REPO = Path(__file__).resolve().parents[2]
ADMIN = "bench-admin-" + "9" * 30
HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(store: Path, cache: Path, drift: bool, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "LORASWAP_STORE_URI": store.as_uri(), "LORASWAP_PORT": str(port),
           "LORASWAP_ADAPTER_CACHE_DIR": str(cache), "LORASWAP_ADMIN_TOKEN": ADMIN,
           "LORASWAP_DRIFT_ENABLED": str(drift).lower(), "LORASWAP_THREADS": "1",
           "LORASWAP_LOG_LEVEL": "WARNING"}
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "loraswap.cli", "serve"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server did not start: {log.read_text()[-2000:]}")


def round_trip(client: httpx.Client, key: str, text: str) -> float:
    started = time.perf_counter()
    response = client.post("/v1/predict", headers={"Authorization": f"Bearer {key}"},
                           json={"adapter": "acme/sentiment", "inputs": text})
    response.raise_for_status()
    return time.perf_counter() - started


def run_round(url: str, key: str, texts: list[str]) -> tuple[list[float], float]:
    with httpx.Client(base_url=url, timeout=120) as client, ThreadPoolExecutor(4) as pool:
        started = time.perf_counter()
        latencies = list(pool.map(lambda t: round_trip(client, key, t), texts))
        return latencies, time.perf_counter() - started


def main(
    package: Annotated[Path, typer.Option(help="A seq-cls package from `loraswap train`.")],
    data: Annotated[Path, typer.Option(help="TSV of sentences (first column).")] = (
        REPO.parent / "shared/data/sst2/dev.tsv"),
    rounds: Annotated[int, typer.Option(min=1, help="Rounds per server.")] = 6,
    per_round: Annotated[int, typer.Option(min=1, help="Requests per round.")] = 40,
    capture: Annotated[str, typer.Option(help="The tenant's capture policy.")] = "all",
) -> None:
    """Drift on vs off, in alternating rounds on two servers sharing one store."""
    with data.open(encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        texts = [row[0] for row in reader]
    work = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    store = work / "store"
    servers = {name: serve(store, work / f"cache-{name}", drift, work / f"{name}.log")
               for name, drift in (("off", False), ("on", True))}
    try:
        off_url, on_url = servers["off"][1], servers["on"][1]
        key = httpx.post(off_url + "/admin/tenants", headers=HEADERS, json={
            "name": "acme", "policy": {"capture": capture}}).json()["api_key"]
        files = [("files", (p.name, p.read_bytes())) for p in sorted(package.iterdir())
                 if p.is_file()]
        httpx.post(off_url + "/admin/adapters/acme/sentiment/versions", headers=HEADERS,
                   files=files, timeout=120).raise_for_status()
        time.sleep(2)  # both replicas see the tenant and the adapter
        for url in (off_url, on_url):  # warm-up: adapter load, first steps
            run_round(url, key, texts[:8])
        results: dict[str, tuple[list[float], float]] = {"off": ([], 0.0), "on": ([], 0.0)}
        for index in range(rounds):
            chunk = texts[(index * per_round) % len(texts):][:per_round]
            for name in (("off", "on") if index % 2 == 0 else ("on", "off")):
                latencies, seconds = run_round(servers[name][1], key, chunk)
                results[name][0].extend(latencies)
                results[name] = (results[name][0], results[name][1] + seconds)
        report: dict[str, Any] = {}
        for name, (latencies, seconds) in results.items():
            ordered = sorted(latencies)
            report[name] = {
                "requests": len(ordered), "p50_ms": round(1000 * statistics.median(ordered), 1),
                "p99_ms": round(1000 * ordered[min(len(ordered) - 1,
                                                   int(0.99 * len(ordered)))], 1),
                "throughput_rps": round(len(ordered) / seconds, 2)}
        report["capture"] = capture
        report["load_average"] = os.getloadavg()
        typer.echo(json.dumps(report, indent=2))
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    typer.run(main)
