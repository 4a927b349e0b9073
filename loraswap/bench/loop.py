"""``loraswap bench loop``: the whole drift loop on real data, through a real server.

1. Train a seq-cls adapter on one dataset of ``../shared/data`` (``--source``) with
   ``loraswap train --push`` into a ``loraswap serve`` started here (drift on, capture of
   every prediction), so its training data is in the store as a deployment has it.
2. Send another dataset's training rows (``--target``) through ``/v1/predict`` and post
   the true label of the first ``--feedback-rows`` of them to ``/v1/feedback``.
3. Start Debian's Prometheus and Alertmanager (:mod:`loraswap.bench.monitoring_stack`,
   the repository's rule with a 3 s hold) once that traffic and its feedback are in: the
   alert fires, Alertmanager posts it to ``/admin/retrain``, the service starts one run.
   (In a deployment the rule's 10-minute hold lets the feedback arrive first.) Without the
   binaries (``--trigger webhook``, or ``auto`` when they are missing) the command posts the
   payload Alertmanager would send, and the report says so.
4. Wait for the run's decision, stop the monitoring daemons, and judge version 1 and the
   candidate through the server on two sets neither trained on: the target dataset's
   test split (``--eval-rows``, never sent before) and the source's test split (the
   adapter's own test split, which the run's gate also reads), each version made active
   in turn with the admin API. Accuracies with 95 % Wilson intervals, differences with a
   paired bootstrap interval; the run record's own gate scores beside them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from loraswap.bench.drift_overhead import ADMIN, HEADERS, REPO
from loraswap.bench.drift_separation import start_server
from loraswap.bench.loop_data import (
    Accuracy,
    Example,
    distinct,
    label_shares,
    median_words,
    paired_difference,
    read_split,
    sample,
    write_jsonl,
)
from loraswap.bench.monitoring_stack import (
    Daemon,
    fast_rules,
    firing,
    start_alertmanager,
    start_prometheus,
)

TENANT, NAME = "acme", "sentiment"
ADAPTER = f"{TENANT}/{NAME}"
FEEDBACK_CALLS = 2  # a replica's feedback slots per caller
T = TypeVar("T")


class LoopError(RuntimeError):
    """The loop could not go on (the message says which step and why)."""


@dataclass(frozen=True)
class LoopOptions:
    """Sizes and knobs of one loop run (the CLI's flags)."""

    source: str = "sst2"
    target: str = "tweets"
    data_root: Path = REPO.parent / "shared" / "data"
    base_model: Path | None = None
    train_rows: int = 2000
    test_rows: int = 400
    train_steps: int = 150
    batch_size: int = 16
    max_length: int = 64
    lora_r: int = 8
    traffic_rows: int = 2000
    feedback_rows: int = 1500
    eval_rows: int = 1000
    window: int = 500
    threads: int = 1
    trigger: str = "auto"  # auto | alertmanager | webhook
    replay_ratio: float = 1.0
    feedback_repeat: int = 2
    warm_start: bool = True
    alert_timeout: float = 300.0
    run_timeout: float = 3600.0
    seed: int = 0


@dataclass(frozen=True)
class LoopData:
    """The rows of one run: what trains, what is sent, what judges."""

    train: list[Example]
    test: list[Example]
    traffic: list[Example]
    eval_new: list[Example]


def prepare(options: LoopOptions) -> LoopData:
    """Sample the pair's rows (seeded); the target's evaluation rows share no text with
    its traffic, and the source's test rows none with its training rows."""
    if options.source == options.target:
        raise LoopError("--source and --target must be different datasets")
    if options.feedback_rows > options.traffic_rows:
        raise LoopError("--feedback-rows cannot exceed --traffic-rows")
    train = sample(read_split(options.data_root, options.source, "train"),
                   options.train_rows, options.seed)
    test = distinct(read_split(options.data_root, options.source, "test"), train)
    traffic = sample(distinct(read_split(options.data_root, options.target, "train"), []),
                     options.traffic_rows, options.seed)
    eval_new = distinct(read_split(options.data_root, options.target, "test"), traffic)
    return LoopData(train, test[:options.test_rows], traffic, eval_new[:options.eval_rows])


def server_env(options: LoopOptions) -> dict[str, str]:
    """The drift-on server's settings beyond the window (and what its runs inherit)."""
    env = {"LORASWAP_DRIFT_CAPTURE_FLUSH_SECONDS": "0.5",
           "LORASWAP_DRIFT_MIN_FEEDBACK": "10", "LORASWAP_REGISTRY_REFRESH_SECONDS": "0.5",
           "LORASWAP_THREADS": str(options.threads), "OMP_NUM_THREADS": str(options.threads),
           "LORASWAP_DEVICE": "cpu",
           "LORASWAP_RETRAIN_REPLAY_RATIO": str(options.replay_ratio),
           "LORASWAP_RETRAIN_FEEDBACK_REPEAT": str(options.feedback_repeat),
           "LORASWAP_RETRAIN_WARM_START": str(options.warm_start).lower()}
    if options.base_model is not None:
        env["LORASWAP_BASE_MODEL"] = str(options.base_model)
    return env


def train_and_push(options: LoopOptions, work: Path, url: str) -> float:
    """``loraswap train --push``: version 1 of the adapter, its data in the store."""
    command = [sys.executable, "-m", "loraswap.cli", "train", "--task", "seq-cls",
               "--data", str(work / "train.jsonl"), "--test-data", str(work / "test.jsonl"),
               "--format", "jsonl", "--max-steps", str(options.train_steps),
               "--batch-size", str(options.batch_size), "--max-length",
               str(options.max_length), "--lora-r", str(options.lora_r),
               "--max-eval-samples", "200", "--seed", str(options.seed), "--no-progress",
               "--output", str(work / "pkg"), "--push", url, "--tenant", TENANT,
               "--name", NAME, "--admin-token", ADMIN]
    if options.base_model is not None:
        command += ["--base-model", str(options.base_model)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": str(options.threads)})
    (work / "train.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise LoopError(f"loraswap train failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return time.monotonic() - started


def predict(client: httpx.Client, key: str, texts: Sequence[str],
            version: str | None = None) -> list[tuple[str, int, str]]:
    """(answer id, index, label) per text, 10 inputs a request, 4 requests at once; with
    ``version``, refuses answers from another version."""
    def one(start: int) -> list[tuple[str, int, str]]:
        response = client.post("/v1/predict", headers={"Authorization": f"Bearer {key}"},
                               json={"adapter": ADAPTER, "inputs": list(texts[start:start + 10])})
        if response.status_code != 200:
            raise LoopError(f"/v1/predict answered {response.status_code}: {response.text}")
        body = response.json()
        if version is not None and str(body["adapter_version"]) != version:
            raise LoopError(f"version {body['adapter_version']} answered, not {version}")
        return [(body["id"], i, o["label"]) for i, o in enumerate(body["outputs"])]

    with ThreadPoolExecutor(4) as pool:
        chunks = list(pool.map(one, range(0, len(texts), 10)))
    return [answer for chunk in chunks for answer in chunk]


def post_feedback(client: httpx.Client, key: str, answers: Sequence[tuple[str, int, str]],
                  rows: Sequence[Example]) -> int:
    """The true label of each answered input, two calls at once (a replica gives one
    caller two feedback slots, 429 beyond: such an answer is retried); how many the
    service accepted (200)."""
    def one(pair: tuple[tuple[str, int, str], Example]) -> bool:
        (prediction_id, index, _), row = pair
        for attempt in range(20):
            response = client.post("/v1/feedback", headers={"Authorization": f"Bearer {key}"},
                                   json={"prediction_id": prediction_id, "index": index,
                                         "label": row.label})
            if response.status_code not in (429, 503):
                break
            time.sleep(min(2.0, 0.05 * 2 ** attempt))
        return response.status_code == 200

    with ThreadPoolExecutor(FEEDBACK_CALLS) as pool:
        return sum(pool.map(one, zip(answers, rows, strict=True)))


def wait(check: Callable[[], T | None], seconds: float, what: str) -> T:
    """Poll ``check`` every half second until it gives something, or fail naming ``what``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise LoopError(f"timed out after {seconds:.0f} s waiting for {what}")


def choose_trigger(requested: str) -> tuple[str, dict[str, str]]:
    """``alertmanager`` with the binaries' paths, or ``webhook`` (no binaries needed)."""
    binaries = {"prometheus": shutil.which("prometheus"),
                "alertmanager": shutil.which("prometheus-alertmanager")
                or shutil.which("alertmanager")}
    found = {k: v for k, v in binaries.items() if v}
    if requested == "webhook" or (requested == "auto" and len(found) < 2):
        return "webhook", {}
    if len(found) < 2:
        raise LoopError("--trigger alertmanager needs `prometheus` and "
                        "`prometheus-alertmanager` on PATH (Debian packages of those names)")
    return "alertmanager", found


def alert_payload() -> dict[str, Any]:
    """The notification Alertmanager sends for LoraswapAdapterDrift (webhook version 4)."""
    return {"version": "4", "status": "firing", "receiver": "loraswap-retrain",
            "groupKey": f"{{}}:{{adapter=\"{ADAPTER}\"}}", "alerts": [{
                "status": "firing", "fingerprint": uuid.uuid4().hex[:16],
                "startsAt": datetime.now(UTC).isoformat(),
                "labels": {"alertname": "LoraswapAdapterDrift", "tenant": TENANT,
                           "adapter": ADAPTER, "version": "1", "severity": "warning"}}]}


def trigger_run(client: httpx.Client, url: str, work: Path, options: LoopOptions,
                trigger: str, binaries: dict[str, str]) -> dict[str, Any]:
    """Fire the alert (or post its payload); the run record the webhook created."""
    started = time.monotonic()
    daemons: list[Daemon] = []
    try:
        if trigger == "alertmanager":
            alertmanager = start_alertmanager(binaries["alertmanager"], work,
                                              f"{url}/admin/retrain", ADMIN)
            daemons.append(alertmanager)
            daemons.append(start_prometheus(
                binaries["prometheus"], work, url.removeprefix("http://"), alertmanager.url,
                fast_rules(work / "drift.rules.yml", hold="3s", min_samples=options.window),
                scrape_token=ADMIN))
            wait(lambda: firing(daemons[1]), options.alert_timeout,
                 "LoraswapAdapterDrift to fire")
        else:
            client.post("/admin/retrain", headers=HEADERS,
                        json=alert_payload()).raise_for_status()
        runs: list[dict[str, Any]] = wait(
            lambda: client.get("/admin/retrain", headers=HEADERS).json(), 120,
            "the webhook to start a run")
    finally:
        for daemon in reversed(daemons):
            daemon.stop()
    if len(runs) != 1:
        raise LoopError(f"expected one run, found {len(runs)}: {runs}")
    return {"run_id": runs[0]["id"], "seconds": round(time.monotonic() - started, 1),
            "trigger": runs[0].get("trigger", {})}


def make_active(client: httpx.Client, key: str, version: str, probe: str) -> None:
    """Promote ``version`` (if needed) and wait until the server answers with it."""
    info = client.get(f"/admin/adapters/{TENANT}/{NAME}", headers=HEADERS).json()
    if str(info["active_version"]) != version:
        client.post(f"/admin/adapters/{TENANT}/{NAME}/promote", headers=HEADERS,
                    json={"version": version}).raise_for_status()

    def serves() -> bool:
        body = client.post("/v1/predict", headers={"Authorization": f"Bearer {key}"},
                           json={"adapter": ADAPTER, "inputs": [probe]}).json()
        return str(body.get("adapter_version")) == version

    wait(serves, 60, f"version {version} to serve")


def judge(client: httpx.Client, key: str, versions: Sequence[str],
          sets: dict[str, list[Example]]) -> dict[str, dict[str, list[bool]]]:
    """Per evaluation set and version, whether each example was answered right."""
    outcomes: dict[str, dict[str, list[bool]]] = {name: {} for name in sets}
    probe = next(iter(sets.values()))[0].text
    for version in versions:
        make_active(client, key, version, probe)
        for name, rows in sets.items():
            answers = predict(client, key, [row.text for row in rows], version)
            outcomes[name][version] = [label == row.label
                                       for (_, _, label), row in zip(answers, rows, strict=True)]
    return outcomes


def summarize(outcomes: dict[str, dict[str, list[bool]]], base: str,
              candidate: str | None) -> dict[str, Any]:
    """Accuracies (Wilson 95 %) per set and version, and candidate minus version 1."""
    out: dict[str, Any] = {}
    for name, per_version in outcomes.items():
        entry: dict[str, Any] = {v: asdict(Accuracy.of(hits)) for v, hits in per_version.items()}
        if candidate is not None and candidate in per_version:
            entry["difference"] = asdict(paired_difference(per_version[base],
                                                           per_version[candidate]))
        out[name] = entry
    return out


def run_loop(options: LoopOptions, work: Path | None = None,
             log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """One loop, start to decision and evaluation; the report (see :mod:`.loop_report`)."""
    data = prepare(options)
    work = work or Path(tempfile.mkdtemp(prefix="bench-loop-"))
    write_jsonl(data.train, work / "train.jsonl")
    write_jsonl(data.test, work / "test.jsonl")
    trigger, binaries = choose_trigger(options.trigger)
    timings: dict[str, float] = {}
    process, url = start_server(work, options.window, server_env(options))
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            key = str(client.post("/admin/tenants", headers=HEADERS, json={
                "name": TENANT, "policy": {"capture": "all"}}).json()["api_key"])
            log(f"training version 1 on {len(data.train)} {options.source} rows")
            timings["train_s"] = round(train_and_push(options, work, url), 1)
            log(f"sending {len(data.traffic)} {options.target} inputs, "
                f"{options.feedback_rows} labelled")
            started = time.monotonic()
            answers = predict(client, key, [row.text for row in data.traffic])
            fed = options.feedback_rows
            accepted = post_feedback(client, key, answers[:fed], data.traffic[:fed])
            timings["traffic_s"] = round(time.monotonic() - started, 1)
            drift = client.get(f"/admin/drift/{TENANT}/{NAME}", headers=HEADERS).json()
            log(f"alert via {trigger}")
            started_run = trigger_run(client, url, work, options, trigger, binaries)
            timings["alert_s"] = started_run["seconds"]
            run_id = started_run["run_id"]
            log(f"run {run_id} started; waiting for its decision")
            started = time.monotonic()
            run: dict[str, Any] = wait(lambda: (lambda r: r if r["status"] in (
                "finished", "failed") else None)(client.get(
                    f"/admin/retrain/{run_id}", headers=HEADERS).json()),
                options.run_timeout, "the run to finish")
            timings["run_s"] = round(time.monotonic() - started, 1)
            candidate = run.get("candidate_version")
            versions = ["1"] + ([str(candidate)] if candidate else [])
            log(f"run {run['decision']}; judging versions {versions}")
            started = time.monotonic()
            outcomes = judge(client, key, versions, {"new_traffic": data.eval_new,
                                                     "original": data.test})
            timings["evaluation_s"] = round(time.monotonic() - started, 1)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return {
        "pair": {"source": options.source, "target": options.target},
        "options": {k: str(v) if isinstance(v, Path) else v
                    for k, v in asdict(options).items()},
        "data": {"train": len(data.train), "test": len(data.test),
                 "traffic": len(data.traffic), "eval_new": len(data.eval_new),
                 "median_words": {options.source: median_words(data.train),
                                  options.target: median_words(data.traffic)},
                 "label_shares": {"eval_new": label_shares(data.eval_new),
                                  "original": label_shares(data.test)}},
        "feedback": {"posted": options.feedback_rows, "accepted": accepted},
        "trigger": trigger, "drift_before_alert": drift.get("signals", drift.get("scores")),
        "alarm_before_alert": drift.get("alarm"),
        "run": {key_: run.get(key_) for key_ in (
            "id", "status", "decision", "reason", "candidate_version", "base_version",
            "data", "evaluations", "gate_metric", "trigger")},
        "evaluation": summarize(outcomes, "1", str(candidate) if candidate else None),
        "timings": timings,
    }

