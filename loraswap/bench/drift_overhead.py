"""Drift on vs off, side by side: latency and throughput of a seq-cls adapter over HTTP.

Three ``loraswap serve`` processes share one store, so each cost is measured apart:

* ``off``: drift off;
* ``on``: drift on, the tenant's capture policy off (windows and scores only);
* ``on-capture``: drift on, capture of every prediction (plus the capture writer);
* with ``--control``, ``off-b``: a second drift-off server. Two identical processes differ
  by a few per cent (memory layout, which core the scheduler gives them), so its ratio to
  ``off`` is the noise floor the other ratios must be read against.

The same requests go to every arm in rounds whose order rotates (off, on, on-capture;
on, on-capture, off; ...), so load from other users of a shared machine hits all alike.
Each request is one SST-2 sentence, sent by ``--concurrency`` closed-loop clients. The
run is bounded: ``--rounds`` x ``--per-round`` requests per arm, and no round starts after
``--max-seconds``. At the end the servers are stopped (which writes the capture batches
still waiting) and the store is checked: every request of ``on-capture`` captured, none of
the others.

Usage: loraswap bench drift --package PKG [--rounds 8] [--per-round 50] [--control] [--json OUT]
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from loraswap.bench.drift_report import ArmRounds, markdown_table, round_order, summarize

REPO = Path(__file__).resolve().parents[2]
ADMIN = "bench-admin-" + "9" * 30
HEADERS = {"Authorization": f"Bearer {ADMIN}"}
ADAPTER = "sentiment"


@dataclass(frozen=True)
class Arm:
    """One server of the comparison: drift on or off, and whose tenant it is sent as."""

    name: str
    drift: bool
    tenant: str  # "quiet" has capture off, "acme" captures every prediction


ARMS = (Arm("off", False, "quiet"), Arm("on", True, "quiet"), Arm("on-capture", True, "acme"))
CONTROL = Arm("off-b", False, "quiet")
TENANT_CAPTURE = {"quiet": "off", "acme": "all"}


@dataclass
class Server:
    """A running ``loraswap serve`` child."""

    arm: Arm
    process: subprocess.Popen[bytes]
    url: str
    log: Path


def _log(message: str) -> None:
    typer.echo(f"[bench drift] {message}", err=True)


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(arm: Arm, work: Path, threads: int) -> Server:
    """Start one server on the shared store (not yet ready: see :func:`wait_ready`)."""
    port = free_port()
    log = work / f"{arm.name}.log"
    env = {**os.environ, "LORASWAP_STORE_URI": (work / "store").as_uri(),
           "LORASWAP_PORT": str(port), "LORASWAP_ADAPTER_CACHE_DIR": str(work / arm.name),
           "LORASWAP_ADMIN_TOKEN": ADMIN, "LORASWAP_DRIFT_ENABLED": str(arm.drift).lower(),
           "LORASWAP_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "LORASWAP_LOG_LEVEL": "WARNING"}
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "loraswap.cli", "serve"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    return Server(arm, process, f"http://127.0.0.1:{port}", log)


def wait_ready(server: Server, timeout: float = 300) -> None:
    """Return once ``/readyz`` answers 200; exit naming the arm if the server died or
    never got ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server {server.arm.name} did not start: "
                     f"{server.log.read_text()[-2000:]}")


def stop(servers: list[Server]) -> None:
    """Stop the servers gracefully (the capture writer writes what waits)."""
    for server in servers:
        server.process.terminate()
    for server in servers:
        try:
            server.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.process.kill()


def setup(url: str, package: Path) -> dict[str, str]:
    """Both tenants and the package under each; returns each tenant's API key."""
    keys = {}
    files = [("files", (p.name, p.read_bytes())) for p in sorted(package.iterdir())
             if p.is_file()]
    for tenant, capture in TENANT_CAPTURE.items():
        response = httpx.post(url + "/admin/tenants", headers=HEADERS, json={
            "name": tenant, "policy": {"capture": capture}})
        response.raise_for_status()
        keys[tenant] = str(response.json()["api_key"])
        httpx.post(f"{url}/admin/adapters/{tenant}/{ADAPTER}/versions", headers=HEADERS,
                   files=files, timeout=120).raise_for_status()
    return keys


def run_round(url: str, key: str, tenant: str, texts: list[str],
              concurrency: int) -> tuple[list[float], float]:
    """Send ``texts`` (one per request) from ``concurrency`` clients; latencies and wall time."""
    headers = {"Authorization": f"Bearer {key}"}
    body = {"adapter": f"{tenant}/{ADAPTER}"}

    def one(client: httpx.Client, text: str) -> float:
        started = time.perf_counter()
        client.post("/v1/predict", headers=headers,
                    json={**body, "inputs": text}).raise_for_status()
        return time.perf_counter() - started

    with httpx.Client(base_url=url, timeout=120) as client, \
            ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        latencies = list(pool.map(lambda t: one(client, t), texts))
        return latencies, time.perf_counter() - started


def read_texts(data: Path) -> list[str]:
    """The first column of a TSV with a header (SST-2)."""
    with data.open(encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        return [row[0].strip() for row in reader if row and row[0].strip()]


def default_data() -> Path:
    """SST-2's dev split in ``shared/data`` beside the checkout, else the machine's."""
    for root in (REPO.parent / "shared", Path("/work/shared")):
        if (root / "data/sst2/dev.tsv").is_file():
            return root / "data/sst2/dev.tsv"
    raise typer.BadParameter("no shared/data/sst2/dev.tsv here: pass --data")


def drift_samples(server: Server) -> dict[str, float]:
    """The drift series that show the arm did its work: window samples and drops. The API
    port's ``/metrics`` asks for a credential outside dev mode: without it this read an
    empty 401 body, so a drift arm that scored nothing could not be told apart."""
    response = httpx.get(server.url + "/metrics", headers=HEADERS, timeout=10)
    response.raise_for_status()
    text = response.text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("loraswap_drift_window_samples{",
                            "loraswap_drift_records_dropped_total{")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def capture_check(store_dir: Path) -> dict[str, int]:
    """Rows captured per tenant and the store objects capture wrote."""
    from loraswap.adapters.store import open_store
    from loraswap.jobs.tenant_data import capture_prefix
    from loraswap.jobs.training_data import read_parquet_batches
    from loraswap.tenants.directory import TenantDirectory

    store = open_store(store_dir.as_uri())
    tenants = TenantDirectory(store)

    def rows(tenant: str) -> int:  # captures/{name}.{id}/{adapter}/
        owner = tenants.get(tenant).data_owner
        return len(read_parquet_batches(store, capture_prefix(owner, ADAPTER)))

    return {"acme_rows": rows("acme"), "quiet_rows": rows("quiet"),
            "batch_objects": len(store.list("captures/")),
            "index_objects": len(store.list("capture-index/"))}


def measure(servers: list[Server], keys: dict[str, str], texts: list[str], *, rounds: int,
            per_round: int, concurrency: int, max_seconds: float) -> list[ArmRounds]:
    """The alternating rounds; stops starting rounds after ``max_seconds``."""
    by_name = {s.arm.name: s for s in servers}
    results = {name: ArmRounds(name) for name in by_name}
    started = time.monotonic()
    for index in range(rounds):
        if index and time.monotonic() - started > max_seconds:
            _log(f"--max-seconds reached after {index} rounds")
            break
        chunk = [texts[(index * per_round + i) % len(texts)] for i in range(per_round)]
        for name in round_order(list(by_name), index):
            server = by_name[name]
            tenant = server.arm.tenant
            latencies, seconds = run_round(server.url, keys[tenant], tenant, chunk,
                                           concurrency)
            results[name].add_round(latencies, seconds)
        _log(f"round {index + 1}/{rounds}: " + ", ".join(
            f"{n} p50 {1000 * r.round_p50s[-1]:.0f} ms" for n, r in results.items()))
    return list(results.values())


def main(
    package: Annotated[Path, typer.Option(help="A seq-cls package from `loraswap train`.")],
    data: Annotated[Path | None, typer.Option(
        help="TSV of sentences (first column); default: SST-2 dev from shared/data.")] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds (each arm once per round).")] = 8,
    per_round: Annotated[int, typer.Option(min=1, help="Requests per arm and round.")] = 50,
    concurrency: Annotated[int, typer.Option(min=1, help="Closed-loop clients.")] = 4,
    warmup: Annotated[int, typer.Option(min=0, help="Unmeasured requests per arm.")] = 16,
    threads: Annotated[int, typer.Option(min=1, help="torch threads of each server.")] = 1,
    max_seconds: Annotated[float, typer.Option(
        help="No new round starts after this many seconds of measuring.")] = 900.0,
    control: Annotated[bool, typer.Option(
        help="Add a second drift-off server (off-b): the noise floor.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Save the figures.")] = None,
) -> None:
    """Drift off / on / on with capture of every prediction, side by side on one store."""
    from loraswap.base_model.precision import CpuFeatures

    texts = read_texts(data or default_data())
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="drift-bench-"))
    servers: list[Server] = []
    try:
        # All at once: a start is mostly imports on one core, and nothing is measured
        # until every server is ready.
        for arm in (*ARMS, CONTROL) if control else ARMS:
            servers.append(launch(arm, work, threads))
        for server in servers:
            wait_ready(server)
        keys = setup(servers[0].url, package)
        time.sleep(3)  # every replica sees the tenants and adapters (registry refresh)
        for server in servers:  # adapter load, first steps
            run_round(server.url, keys[server.arm.tenant], server.arm.tenant,
                      texts[-warmup:] if warmup else [], concurrency)
        arms = measure(servers, keys, texts, rounds=rounds, per_round=per_round,
                       concurrency=concurrency, max_seconds=max_seconds)
        time.sleep(6)  # one scoring pass after the last round sets the window gauges
        drift = {s.arm.name: drift_samples(s) for s in servers if s.arm.drift}
        idle = [name for name, series in drift.items() if not any(
            k.startswith("loraswap_drift_window_samples{") and v > 0 for k, v in series.items())]
        if idle:  # then "on" measured nothing that drift costs
            raise typer.BadParameter(f"drift arms {idle} scored no input (is the package's "
                                     "profile.json missing?)", param_hint="--package")
    finally:
        stop(servers)
    load_after = os.getloadavg()
    summaries = summarize(arms)
    checks = capture_check(work / "store")
    report: dict[str, Any] = {
        "command": command_line(),
        "cpu": CpuFeatures.detect().describe(), "load_before": load_before,
        "load_after": load_after, "rounds": len(arms[0].round_seconds),
        "per_round": per_round, "concurrency": concurrency, "threads": threads,
        "arms": [asdict(s) for s in summaries], "drift_series": drift, "capture": checks,
        "expected_captured_rows": warmup + sum(len(a.latencies) for a in arms
                                               if a.name == "on-capture"),
    }
    typer.echo(render(report, summaries))
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2), encoding="utf-8")


def command_line() -> str:
    """How this run was started, as a user would type it."""
    args = sys.argv[1:]
    if args[:2] == ["bench", "drift"]:
        return " ".join(["loraswap", *args])
    return " ".join(["python -m loraswap.bench.drift_overhead", *args])


def render(report: dict[str, Any], summaries: Any) -> str:
    """The report: what ran where, the table, and the capture check."""
    load = ", ".join(f"{value:.2f}" for value in report["load_after"])
    before = ", ".join(f"{value:.2f}" for value in report["load_before"])
    return "\n".join([
        f"`{report['command']}`", "",
        f"CPU: {report['cpu']}; load average before {before}, after {load}; "
        f"{report['rounds']} rounds x {report['per_round']} requests per arm, "
        f"{report['concurrency']} clients, torch threads {report['threads']}.", "",
        markdown_table(summaries), "",
        f"Captured rows: {report['capture']['acme_rows']} of "
        f"{report['expected_captured_rows']} on-capture requests (uncaptured tenant: "
        f"{report['capture']['quiet_rows']}); store objects written by capture: "
        f"{report['capture']['batch_objects']} Parquet batches, "
        f"{report['capture']['index_objects']} index objects.",
        "Drift series: " + json.dumps(report["drift_series"]),
    ])


if __name__ == "__main__":
    from loraswap.offline import stay_offline

    stay_offline()
    typer.run(main)
