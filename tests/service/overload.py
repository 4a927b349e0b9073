"""Overload run (issue 13): ``python -m tests.service.overload [--seconds 60]``.

Not part of the test suite (it saturates the CPU for about two minutes; needs ``wrk``,
installed with apt-get when missing). Starts ``loraswap serve`` on a tiny random model on
loopback with two tenants, measures capacity with a closed loop of ``wrk`` connections, then sends
open-loop load at twice that rate from the "flood" tenant (``wrk``, see
:mod:`tests.service.wrk_load`) for ``--seconds``, while the "calm" tenant sends a tenth of
capacity from a light Python client that times each request. With ``--server-cpus`` and
``--client-cpus`` the server and the load generators run on separate cores (``taskset``).
Prints the figures as JSON and exits 1 when a rule is broken:

* overload is shed with 429 and a ``Retry-After`` header, never with a 5xx, a transport
  error or a hang (every request sent is answered);
* every accepted request (200) completes with a whole body;
* the server's RSS stays bounded (peak within ``--rss-budget-mib`` of the idle RSS);
* the calm tenant still gets its share (at least 90% of its requests answered 200).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from tests.conftest import build_tiny_llama, build_tiny_tokenizer
from tests.service.processes import ServiceProcess
from tests.service.wrk_load import WrkPlan, run_wrk

ADMIN = "overload-admin-" + "3" * 32
TOKENS = 16
BODY = {"inputs": "the quick brown fox", "parameters": {"max_new_tokens": TOKENS,
                                                         "ignore_eos": True}}
MARKER = f'"tokens":{TOKENS}'  # in every complete answer to BODY


@dataclass
class Tally:
    """Answers of the calm tenant (the Python client)."""

    sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    shed_without_retry_after: int = 0
    incomplete: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, outcome: str) -> None:
        """Count one outcome (an HTTP status or an error name)."""
        self.statuses[outcome] = self.statuses.get(outcome, 0) + 1

    def summary(self) -> dict[str, object]:
        """The figures, in the shape of the wrk tallies."""
        latencies = sorted(self.latencies)
        answered = sum(n for kind, n in self.statuses.items() if kind[:1].isdigit())
        return {"sent": self.sent, "answered": answered, "statuses": self.statuses,
                "no_retry_after": self.shed_without_retry_after,
                "incomplete": self.incomplete,
                "accepted_p50_s": _percentile(latencies, 50),
                "accepted_p99_s": _percentile(latencies, 99)}


def _percentile(values: list[float], percent: int) -> float | None:
    return round(values[min(len(values) - 1, len(values) * percent // 100)], 3) \
        if values else None


def _kind(response: httpx.Response) -> str:
    """The status, and for a 429 which limit said no (as the wrk script names them)."""
    if response.status_code != 429:
        return str(response.status_code)
    text = response.text
    if "share of the queue" in text:
        return "429 queue share"
    return "429 queue full" if "queue is full" in text else "429 other"


async def _one(client: httpx.AsyncClient, key: str, tally: Tally) -> None:
    started = time.monotonic()
    tally.sent += 1
    try:
        response = await client.post("/v1/predict", json=BODY,
                                     headers={"Authorization": f"Bearer {key}"})
    except httpx.HTTPError as exc:
        tally.add(type(exc).__name__)
        return
    tally.add(_kind(response))
    if response.status_code == 429 and "retry-after" not in response.headers:
        tally.shed_without_retry_after += 1
    if response.status_code == 200:
        if MARKER not in response.text:
            tally.incomplete += 1
        tally.latencies.append(time.monotonic() - started)


async def open_loop(client: httpx.AsyncClient, key: str, rate: float, seconds: float,
                    tally: Tally) -> None:
    """Send at ``rate`` per second for ``seconds``, whatever the answers take (open loop)."""
    tasks = []
    started = time.monotonic()
    for index in range(round(rate * seconds)):
        delay = started + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(client, key, tally)))
    await asyncio.gather(*tasks)


async def probe_loop(client: httpx.AsyncClient, seconds: float, lags: list[float]) -> None:
    """``/healthz`` (no auth, no body, no engine) twice a second: how long the server takes
    to get to any request at all, i.e. the wait in its event loop and accept queue."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        await client.get("/healthz")
        lags.append(time.monotonic() - started)
        await asyncio.sleep(0.5)


async def sample_rss(pid: int, stop: asyncio.Event, samples: list[int]) -> None:
    """The server's RSS every 0.5 s."""
    process = psutil.Process(pid)
    while not stop.is_set():
        samples.append(int(process.memory_info().rss))
        await asyncio.sleep(0.5)


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _plan(server: ServiceProcess, args: argparse.Namespace, key: str, rate: float,
          seconds: float, connections: int) -> WrkPlan:
    return WrkPlan(url=server.url, key=key, body=json.dumps(BODY), marker=MARKER, rate=rate,
                   seconds=seconds, connections=connections, cpus=args.client_cpus)


async def run(args: argparse.Namespace, server: ServiceProcess) -> dict[str, object]:
    """Capacity, then the overload phase; the figures."""
    admin = {"Authorization": f"Bearer {ADMIN}"}
    # The calm client's pooled connections expire before the server's keep-alive timeout
    # (5 s), so it never reuses one the server is closing.
    limits = httpx.Limits(max_connections=256, keepalive_expiry=2.0)
    async with httpx.AsyncClient(base_url=server.url, timeout=300, limits=limits) as client:
        keys = {}
        for tenant in ("flood", "calm"):
            created = await client.post("/admin/tenants", headers=admin, json={"name": tenant})
            keys[tenant] = created.json()["api_key"]
        await run_wrk(_plan(server, args, keys["flood"], 0, 3, 4))  # warm-up
        measured = await run_wrk(_plan(server, args, keys["flood"], 0,
                                       args.capacity_seconds, 16))
        statuses = measured["statuses"]
        assert isinstance(statuses, dict)
        capacity = statuses.get("200", 0) / args.capacity_seconds
        flood_rate, calm_rate = 2 * capacity, max(0.5, capacity / 10)
        print(f"capacity {capacity:.1f} requests/s; overload phase starts", file=sys.stderr,
              flush=True)
        assert server.process is not None
        idle_rss = psutil.Process(server.process.pid).memory_info().rss
        calm, samples, stop = Tally(), [], asyncio.Event()
        sampler = asyncio.create_task(sample_rss(server.process.pid, stop, samples))
        cpu_before = psutil.cpu_times()
        server_process = psutil.Process(server.process.pid)
        server_cpu_before = _cpu_seconds(server_process)
        client_cpu_before = _cpu_seconds(psutil.Process())
        started = time.monotonic()
        # Connections for one second of flood: an answer within a second frees its
        # connection in time for the schedule (a late send is counted).
        lags: list[float] = []
        flood, _, _ = await asyncio.gather(
            run_wrk(_plan(server, args, keys["flood"], flood_rate, args.seconds,
                          max(64, round(flood_rate)))),
            open_loop(client, keys["calm"], calm_rate, args.seconds, calm),
            probe_loop(client, args.seconds, lags))
        elapsed = time.monotonic() - started
        cpu = psutil.cpu_times()
        server_cpu = _cpu_seconds(server_process) - server_cpu_before
        client_cpu = _cpu_seconds(psutil.Process()) - client_cpu_before
        stop.set()
        await sampler
        scrape = await client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
    busy = (sum(cpu) - cpu.idle) - (sum(cpu_before) - cpu_before.idle)
    return {"capacity_rps": round(capacity, 1), "capacity_run": measured,
            "offered_flood_rps": round(flood_rate, 1), "offered_calm_rps": round(calm_rate, 1),
            "seconds": round(elapsed, 1),
            "machine_cpu_busy": round(busy / ((sum(cpu) - sum(cpu_before)) or 1), 2),
            "server_cores_used": round(server_cpu / elapsed, 2),
            "calm_client_cores_used": round(client_cpu / elapsed, 2),
            "idle_rss_mib": round(idle_rss / 2**20), "peak_rss_mib": round(max(samples) / 2**20),
            "healthz_p50_s": _percentile(sorted(lags), 50),
            "healthz_p99_s": _percentile(sorted(lags), 99),
            "flood": flood, "calm": calm.summary(), "metrics_scrape": scrape.status_code}


def verdict(figures: dict[str, object], rss_budget_mib: int) -> list[str]:
    """The rules this run broke."""
    problems = []
    for tenant in ("flood", "calm"):
        tally = figures[tenant]
        assert isinstance(tally, dict)
        statuses: dict[str, int] = tally["statuses"]
        bad = {s: n for s, n in statuses.items() if s != "200" and not s.startswith("429")}
        if bad:
            problems.append(f"{tenant}: answers other than 200/429: {bad}")
        if tally["sent"] != tally["answered"]:
            # Lost (a transport error) or still unanswered when the generator stopped (the
            # drain deadline: 30 s after the last scheduled send).
            problems.append(f"{tenant}: {tally['sent'] - tally['answered']} requests sent "
                            "were not answered")
        if tally["no_retry_after"]:
            problems.append(f"{tenant}: 429 without Retry-After")
        if tally["incomplete"]:
            problems.append(f"{tenant}: accepted requests did not complete")
    calm = figures["calm"]
    assert isinstance(calm, dict)
    served = calm["statuses"].get("200", 0) / max(1, calm["sent"])
    if served < 0.9:
        problems.append(f"calm tenant got only {served:.0%} of its requests answered")
    peak, idle = figures["peak_rss_mib"], figures["idle_rss_mib"]
    assert isinstance(peak, int) and isinstance(idle, int)
    if peak - idle > rss_budget_mib:
        problems.append(f"RSS grew from {idle} to {peak} MiB")
    if figures["metrics_scrape"] != 200:
        problems.append("/metrics did not scrape after the run")
    return problems


def _cpus(text: str | None) -> set[int] | None:
    return {int(cpu) for cpu in text.split(",")} if text else None


def start_server(tmp: Path, server_cpus: set[int] | None) -> ServiceProcess:
    """``loraswap serve`` on a tiny model (on ``server_cpus`` only, when given)."""
    base = tmp / "tiny-base"
    tokenizer = build_tiny_tokenizer(base)
    build_tiny_llama(base, vocab_size=len(tokenizer))
    server = ServiceProcess({
        "LORASWAP_BASE_MODEL": str(base), "LORASWAP_QUANTIZATION": "fp32",
        "LORASWAP_DEVICE": "cpu", "LORASWAP_ADMIN_TOKEN": ADMIN,
        "LORASWAP_STORE_URI": (tmp / "store").as_uri(),
        "LORASWAP_ADAPTER_CACHE_DIR": str(tmp / "cache"),
        "LORASWAP_MAX_MODEL_LEN": "256", "LORASWAP_MAX_BATCH_SIZE": "16",
        "LORASWAP_MAX_QUEUE": "64", "LORASWAP_THREADS": "1",
        "LORASWAP_LOG_LEVEL": "WARNING",
    }, tmp)
    ours = os.sched_getaffinity(0)
    if server_cpus:
        os.sched_setaffinity(0, server_cpus)  # the child inherits it
    try:
        return server.start()
    finally:
        os.sched_setaffinity(0, ours)


def main() -> int:
    """Start the server, run, print the figures and the verdict."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--capacity-seconds", type=float, default=10.0)
    parser.add_argument("--rss-budget-mib", type=int, default=300)
    parser.add_argument("--server-cpus", help="CPU list for the server, e.g. 0")
    parser.add_argument("--client-cpus", help="CPU list for wrk and this client, e.g. 1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), _cpus(args.server_cpus))
        client_cpus = _cpus(args.client_cpus)
        if client_cpus:
            os.sched_setaffinity(0, client_cpus)
        try:
            print("server ready", file=sys.stderr, flush=True)
            figures = asyncio.run(run(args, server))
        finally:
            server.stop()
            print(f"server log (end):\n{server.log()}", file=sys.stderr)
    figures.update(server_cpus=args.server_cpus, client_cpus=args.client_cpus,
                   load_average=[round(x, 2) for x in os.getloadavg()])
    problems = verdict(figures, args.rss_budget_mib)
    figures["problems"] = problems
    print(json.dumps(figures, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
