"""Do the drift gauges separate in-distribution traffic from another dataset's?

One ``loraswap serve`` with drift on scores a seq-cls package's live window against the
package's ``profile.json``. The command sends ``--window`` inputs of each traffic source in
turn (held-out rows of the training file first, then each other dataset), waits until the
window holds only that source's inputs and has been scored, and prints every score of
every source as JSON (and a Markdown table with ``--markdown``). The window is sliding, so
each source's scores are those of a window filled by that source alone.

Usage::

    loraswap bench drift-separation --package PKG \\
        --traffic held-out=train-heldout.tsv:sentence \\
        --traffic tweets=../shared/data/tweet_sentiment_extraction/test.csv:text

A traffic spec is ``NAME=PATH:COLUMN`` (TSV when PATH ends in .tsv, else CSV); the first
``--window`` non-empty rows are sent.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from loraswap.base_model.precision import CpuFeatures
from loraswap.bench.drift_overhead import ADMIN, HEADERS, REPO, free_port

TENANT, ADAPTER = "acme", "classifier"


@dataclass(frozen=True)
class TrafficSource:
    """A named list of input texts."""

    name: str
    texts: list[str]


def read_texts(spec: str) -> tuple[str, list[str]]:
    """``NAME=PATH:COLUMN`` → the name and every non-empty text of that column (a CSV, or
    a TSV by its extension); the drift benches' one reader of such specs."""
    name, sep, rest = spec.partition("=")
    path_text, colon, column = rest.rpartition(":")
    if not sep or not colon or not name or not column:
        raise typer.BadParameter(f"source {spec!r} is not NAME=PATH:COLUMN")
    path = Path(path_text)
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter,
                                quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        if column not in (reader.fieldnames or []):
            raise typer.BadParameter(f"{path} has no column {column!r} "
                                     f"(it has {reader.fieldnames})")
        return name, [row[column].strip() for row in reader if (row[column] or "").strip()]


def read_traffic(spec: str, count: int) -> TrafficSource:
    """``NAME=PATH:COLUMN`` → the first ``count`` non-empty texts of that column."""
    name, texts = read_texts(spec)
    if len(texts) < count:
        raise typer.BadParameter(f"{spec.partition('=')[2].rpartition(':')[0]} has "
                                 f"{len(texts)} texts, the window needs {count}")
    return TrafficSource(name, texts[:count])


def start_server(work: Path, window: int, extra_env: dict[str, str] | None = None,
                 ) -> tuple[subprocess.Popen[bytes], str]:
    """A drift-on server whose window and minimum sample count are both ``window``
    (``extra_env``: more settings)."""
    port = free_port()
    env = {**os.environ, "LORASWAP_STORE_URI": (work / "store").as_uri(),
           "LORASWAP_PORT": str(port), "LORASWAP_ADAPTER_CACHE_DIR": str(work / "cache"),
           "LORASWAP_ADMIN_TOKEN": ADMIN, "LORASWAP_DRIFT_ENABLED": "true",
           "LORASWAP_DRIFT_WINDOW_SIZE": str(window),
           "LORASWAP_DRIFT_MIN_SAMPLES": str(window),
           "LORASWAP_DRIFT_SCORE_INTERVAL_SECONDS": "0.5", "LORASWAP_LOG_LEVEL": "WARNING",
           **(extra_env or {})}
    log = work / "server.log"
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "loraswap.cli", "serve"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"server did not start: {log.read_text()[-2000:]}")


def register(client: httpx.Client, package: Path) -> str:
    """Create the tenant, push the package; the tenant's API key."""
    created = client.post("/admin/tenants", headers=HEADERS, json={"name": TENANT})
    created.raise_for_status()
    files = [("files", (p.name, p.read_bytes())) for p in sorted(package.iterdir())
             if p.is_file()]
    client.post(f"/admin/adapters/{TENANT}/{ADAPTER}/versions", headers=HEADERS,
                files=files, timeout=300).raise_for_status()
    return str(created.json()["api_key"])


def scores_after(client: httpx.Client, key: str, source: TrafficSource) -> dict[str, Any]:
    """Send the source (10 inputs a request) and read the scores of its full window."""
    for start in range(0, len(source.texts), 10):
        client.post("/v1/predict", headers={"Authorization": f"Bearer {key}"},
                    json={"adapter": f"{TENANT}/{ADAPTER}",
                          "inputs": source.texts[start:start + 10]}).raise_for_status()
    time.sleep(1.5)  # three scoring intervals: the last record is in the window and scored
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        view = client.get(f"/admin/drift/{TENANT}/{ADAPTER}", headers=HEADERS).json()
        if view.get("scores"):
            return {"scores": view["scores"], "window_samples": view["window_samples"],
                    "absent_signals": view.get("absent_signals", {})}
        time.sleep(0.5)
    raise SystemExit(f"no scores for {source.name}: {view}")


def markdown(results: dict[str, dict[str, Any]]) -> str:
    """One row per traffic source, one column per score."""
    columns = sorted({name for r in results.values() for name in r["scores"]})
    lines = ["| traffic | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for source, result in results.items():
        cells = [f"{result['scores'][c]:.3f}" if c in result["scores"] else "–"
                 for c in columns]
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(
    package: Annotated[Path, typer.Option(help="A seq-cls package from `loraswap train`.")],
    traffic: Annotated[list[str], typer.Option(
        help="NAME=PATH:COLUMN, in the order sent; the first is the in-distribution one.")],
    window: Annotated[int, typer.Option(min=10, help="Window and minimum samples.")] = 500,
    show_markdown: Annotated[bool, typer.Option("--markdown", help="Also a table.")] = False,
) -> None:
    """Drift scores of windows filled by each traffic source in turn, through a real server."""
    sources = [read_traffic(spec, window) for spec in traffic]
    work = Path(tempfile.mkdtemp(prefix="drift-separation-"))
    process, url = start_server(work, window)
    try:
        with httpx.Client(base_url=url, timeout=300) as client:
            key = register(client, package)
            results = {source.name: scores_after(client, key, source) for source in sources}
    finally:
        process.terminate()
        process.wait(timeout=30)
    report = {"window": window, "package": str(package), "results": results,
              "cpu": CpuFeatures.detect().describe(),
              "load_average": os.getloadavg()}
    typer.echo(json.dumps(report, indent=2))
    if show_markdown:
        typer.echo(markdown(results))


if __name__ == "__main__":
    from loraswap.offline import stay_offline

    stay_offline()
    typer.run(main)
