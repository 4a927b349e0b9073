"""Real Prometheus and Alertmanager on loopback with short intervals.

The drift loop's alert path as a deployment runs it, with the repository's alert rule:
Prometheus scrapes ``loraswap serve`` and evaluates ``monitoring/rules/drift.rules.yml``
(its ``for`` and sample minimum shortened), Alertmanager posts the firing alert to
``/admin/retrain`` with a bearer token. Used by ``loraswap bench loop`` and the end-to-end
test; the binaries are Debian's ``prometheus`` and ``prometheus-alertmanager``.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from loraswap.bench.drift_overhead import REPO, free_port


class StackError(RuntimeError):
    """A monitoring daemon exited or never became ready (its log tail is the message)."""


def fast_rules(target: Path, *, hold: str, min_samples: int) -> Path:
    """The repo's drift rules with a short ``for`` and a small sample minimum (the
    expression is otherwise the one that ships)."""
    text = (REPO / "monitoring" / "rules" / "drift.rules.yml").read_text()
    text = re.sub(r"for: \d+m", f"for: {hold}", text)
    text = text.replace(">= 100", f">= {min_samples}")
    target.write_text(text)
    return target


@dataclass
class Daemon:
    """A started binary, its URL and its log file."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        """Terminate the process (kill it after 20 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)

    def tail(self) -> str:
        """The end of the daemon's log."""
        return self.log.read_text(errors="replace")[-3000:]


def _start(command: list[str], url: str, ready_path: str, log: Path) -> Daemon:
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    daemon = Daemon(process, url, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"{command[0]} exited:\n{daemon.tail()}")
        try:
            if httpx.get(url + ready_path, timeout=2).status_code == 200:
                return daemon
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    daemon.stop()
    raise StackError(f"{command[0]} not ready:\n{daemon.tail()}")


def start_alertmanager(binary: str, folder: Path, webhook_url: str, token: str) -> Daemon:
    """Alertmanager routing LoraswapAdapterDrift to the retrain webhook, bearer token set."""
    port = free_port()
    config: dict[str, Any] = {
        "route": {"receiver": "loraswap-retrain", "group_by": ["tenant", "adapter", "version"],
                  "group_wait": "1s", "group_interval": "2s", "repeat_interval": "1h"},
        "receivers": [{"name": "loraswap-retrain", "webhook_configs": [{
            "url": webhook_url, "send_resolved": True,
            "http_config": {"authorization": {"type": "Bearer", "credentials": token}},
        }]}],
    }
    (folder / "alertmanager.yml").write_text(yaml.safe_dump(config))
    return _start([binary, f"--config.file={folder / 'alertmanager.yml'}",
                   f"--storage.path={folder / 'am-data'}",
                   f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                  f"http://127.0.0.1:{port}", "/-/ready", folder / "alertmanager.log")


def start_prometheus(binary: str, folder: Path, target: str, alertmanager: str,
                     rules: Path, scrape_token: str | None = None) -> Daemon:
    """Prometheus scraping loraswap and evaluating the rules every second; ``scrape_token``
    is the bearer credential the API port's ``/metrics`` asks for outside dev mode
    (``LORASWAP_METRICS_TOKEN`` or the admin token)."""
    scrape: dict[str, Any] = {"job_name": "loraswap", "static_configs": [{"targets": [target]}]}
    if scrape_token is not None:
        scrape["authorization"] = {"type": "Bearer", "credentials": scrape_token}
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [alertmanager.removeprefix("http://")]}]}]},
        "scrape_configs": [scrape],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    return _start([binary, f"--config.file={folder / 'prometheus.yml'}",
                   f"--storage.tsdb.path={folder / 'prom-data'}",
                   f"--web.listen-address=127.0.0.1:{port}"],
                  f"http://127.0.0.1:{port}", "/-/ready", folder / "prometheus.log")


def query(prometheus: Daemon, expr: str) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    body = httpx.get(prometheus.url + "/api/v1/query", params={"query": expr}, timeout=10)
    result: list[dict[str, Any]] = body.json()["data"]["result"]
    return result


def firing(prometheus: Daemon) -> list[dict[str, Any]]:
    """Prometheus's firing LoraswapAdapterDrift alerts."""
    alerts = httpx.get(prometheus.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return [a for a in alerts if a["labels"].get("alertname") == "LoraswapAdapterDrift"
            and a["state"] == "firing"]
