"""False-alarm and detection rates of the drift alarm levels, without a server.

The service scores a window of live signals against a version's ``profile.json`` and
alarms when any score is above its level (``service/drift/assess.py``). This command
measures how often that happens:

* **in distribution**: many windows (``--draws`` per size) resampled from held-out rows
  of the adapter's own data, rows it neither trained on nor profiled (its reference sample
  is its validation split): the share of windows in alarm is the false-alarm rate;
* **shifted**: the same windows of another dataset (``--shift NAME=PATH:COLUMN``): the
  share in alarm is the detection rate.

The adapter runs once over each source's rows (one forward pass per batch gives the
predicted label, the confidence and the mean-pooled final hidden state, as the service's
classification pass computes them); the windows then reuse those signals, so thousands
of windows cost seconds. Seq-cls packages only.

Usage::

    loraswap bench drift-calibration --package PKG --in-distribution pool.csv:text \\
        --shift tweets=../shared/data/tweet_sentiment_extraction/test.csv:text
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

from loraswap.adapters.package import PROFILE_FILE, AttentionMode, TaskKind, read_manifest
from loraswap.base_model.loading import load_base_model
from loraswap.bench.drift_separation import read_texts
from loraswap.service.drift.assess import assess
from loraswap.service.drift.calibration import ALARM_CONFIDENCE, AlarmLevels
from loraswap.service.drift.reference import ReferenceProfile, parse_profile
from loraswap.service.drift.scores import FloatArray
from loraswap.service.drift.windows import VersionWindow
from loraswap.training.evaluate import ordered_batches
from loraswap.training.reference_profile import classifier_encodings
from loraswap.training.tasks import Encoded, TaskModel, collate, load_task_model, model_inputs

DEFAULT_BASE = Path.home() / ".cache" / "loraswap" / "models" / "SmolLM2-135M-Instruct"


def cpu_name() -> str:
    """The CPU's model name and torch's CPU capability (benchmarks name their machine)."""
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown")
    return f"{model}, torch {torch.backends.cpu.get_cpu_capability()}"


@dataclass
class RowSignals:
    """Every row's signals, as the service records them."""

    lengths: list[float]
    confidences: list[float]
    labels: list[str]
    embeddings: FloatArray  # projected on the reference's PCA basis (or empty)


@torch.no_grad()
def row_signals(task_model: TaskModel, encoded: list[Encoded], labels: list[str],
                reference: ReferenceProfile, pad_id: int, batch_size: int = 16) -> RowSignals:
    """One forward pass per batch: predicted label, top probability and mean-pooled final
    hidden state (the backbone's last, normed, hidden state) of every row."""
    index = {id(e): i for i, e in enumerate(encoded)}
    confidences, predicted = [0.0] * len(encoded), [""] * len(encoded)
    vectors: list[FloatArray | None] = [None] * len(encoded)
    task_model.model.eval()
    for chunk in ordered_batches(encoded, batch_size):
        batch = collate(chunk, pad_id)
        out = task_model.model(**model_inputs(task_model, batch), output_hidden_states=True)
        probs = out.logits.float().softmax(-1)
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (out.hidden_states[-1].float() * mask).sum(1) / mask.sum(1).clamp(min=1)
        for row, example in enumerate(chunk):
            top, arg = probs[row].max(-1)
            i = index[id(example)]
            confidences[i], predicted[i] = float(top), labels[int(arg)]
            vectors[i] = pooled[row].numpy().astype(np.float64)
    embedding = reference.embedding
    matrix = (embedding.project(np.stack([v for v in vectors if v is not None]))
              if embedding is not None else np.zeros((0, 0)))
    return RowSignals([float(len(e.input_ids)) for e in encoded], confidences, predicted,
                      matrix)


def window_of(signals: RowSignals, rows: list[int], reference: ReferenceProfile,
              levels: AlarmLevels) -> VersionWindow:
    """A window holding exactly ``rows`` (levels shared between windows of a reference)."""
    window = VersionWindow(reference, len(rows))
    window.levels = levels
    window.lengths.extend(signals.lengths[i] for i in rows)
    window.confidences.extend(signals.confidences[i] for i in rows)
    window.labels.extend((signals.labels[i],) for i in rows)
    if len(signals.embeddings):
        window.embeddings.extend(signals.embeddings[i] for i in rows)
    return window


def rates(signals: RowSignals, reference: ReferenceProfile, levels: AlarmLevels,
          sizes: list[int], draws: int, seed: int) -> dict[str, Any]:
    """Per window size: share of windows in alarm (any signal, and per signal), the mean
    score and the level of each signal."""
    rng = random.Random(seed)
    total = len(signals.lengths)
    out: dict[str, Any] = {}
    for size in sizes:
        alarms = 0
        per_signal: dict[str, list[float]] = defaultdict(list)
        hits: dict[str, int] = defaultdict(int)
        level: dict[str, float] = {}
        for _ in range(draws):
            rows = (rng.sample(range(total), size) if total >= size
                    else [rng.randrange(total) for _ in range(size)])
            assessed = assess(window_of(signals, rows, reference, levels), 1)
            alarms += any(a.alarm for a in assessed)
            for a in assessed:
                name = f"{a.signal}/{a.method}"
                per_signal[name].append(a.score)
                hits[name] += a.alarm
                level[name] = a.level
        out[str(size)] = {
            "alarm_rate": alarms / draws, "resampled": total < size,
            "signals": {name: {"alarm_rate": hits[name] / draws,
                               "mean_score": float(np.mean(values)),
                               "level": level[name]}
                        for name, values in sorted(per_signal.items())}}
    return out


def markdown(name: str, labels: int, results: dict[str, dict[str, Any]]) -> str:
    """One row per (source, window size): the alarm rate and each signal's rate."""
    columns = sorted({s for r in results.values() for w in r.values() for s in w["signals"]})
    lines = ["| adapter | traffic | window | windows in alarm | " + " | ".join(columns) + " |",
             "|---|---|---:|---:|" + "---:|" * len(columns)]
    for source, by_size in results.items():
        for size, result in by_size.items():
            cells = [f"{result['signals'][c]['alarm_rate']:.1%} "
                     f"({result['signals'][c]['mean_score']:.3f} / "
                     f"{result['signals'][c]['level']:.3f})"
                     if c in result["signals"] else "–" for c in columns]
            lines.append(f"| {name} ({labels} labels) | {source} | {size} | "
                         f"{result['alarm_rate']:.1%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(
    package: Annotated[Path, typer.Option(help="A seq-cls package from `loraswap train`.")],
    in_distribution: Annotated[str, typer.Option(
        help="PATH:COLUMN of held-out rows of the adapter's own data (not its training or "
             "validation rows).")],
    shift: Annotated[list[str] | None, typer.Option(
        help="NAME=PATH:COLUMN of another dataset (repeatable).")] = None,
    windows: Annotated[str, typer.Option(help="Window sizes.")] = "100,200,300,400,500",
    draws: Annotated[int, typer.Option(help="Windows per size and source.")] = 1000,
    max_rows: Annotated[int, typer.Option(help="Rows read per source (seeded).")] = 1500,
    base_model: Annotated[Path, typer.Option(help="Base model folder.")] = DEFAULT_BASE,
    seed: Annotated[int, typer.Option()] = 0,
    name: Annotated[str, typer.Option(help="Adapter name in the table.")] = "adapter",
    output: Annotated[Path | None, typer.Option(help="Write the JSON here too.")] = None,
) -> None:
    """Print the alarm rates as JSON, then as a Markdown table."""
    started = time.perf_counter()
    torch.set_num_threads(1)
    manifest = read_manifest(package)
    if manifest.task is not TaskKind.SEQ_CLS or not manifest.labels:
        raise typer.BadParameter("drift-calibration measures seq-cls packages")
    labels = list(manifest.labels)
    reference = parse_profile(json.loads((package / PROFILE_FILE).read_text()), manifest.task)
    loaded = load_base_model(base_model, None, "cpu")
    task_model = load_task_model(loaded, manifest.task, labels, package,
                                 bidirectional=manifest.attention is AttentionMode.BIDIRECTIONAL)
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
        tokenizer.eos_token_id)
    max_length = int(((manifest.training or {}).get("config") or {}).get("max_length") or 64)
    sizes = [int(s) for s in windows.split(",") if s.strip()]
    levels = AlarmLevels()
    results: dict[str, dict[str, Any]] = {}
    rows: dict[str, int] = {}
    for spec in [f"in-distribution={in_distribution}", *(shift or [])]:
        source, found = read_texts(spec)
        texts = random.Random(seed).sample(found, min(max_rows, len(found)))
        encoded = classifier_encodings(TaskKind.SEQ_CLS, tokenizer, texts, labels, max_length)
        signals = row_signals(task_model, encoded, labels, reference, pad_id)
        results[source] = rates(signals, reference, levels, sizes, draws, seed)
        rows[source] = len(texts)
    document = {
        "package": str(package), "labels": len(labels), "alarm_confidence": ALARM_CONFIDENCE,
        "reference": {"label_inputs": reference.label_inputs,
                      "confidence": sum(reference.confidence.counts)
                      if reference.confidence else 0,
                      "label_source": reference.label_source},
        "draws": draws, "rows": rows, "results": results,
        "cpu": cpu_name(), "load_average": list(os.getloadavg()),
        "seconds": round(time.perf_counter() - started, 1)}
    text = json.dumps(document, indent=2)
    if output is not None:
        output.write_text(text, encoding="utf-8")
    typer.echo(text)
    typer.echo(markdown(name, len(labels), results))
