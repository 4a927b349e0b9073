"""The Markdown of ``loraswap bench loop``'s report (pure: tested without servers)."""

from __future__ import annotations

import math
from typing import Any

SET_NAMES = {"new_traffic": "new traffic: {target} test split (never sent before)",
             "original": "original: {source} test split"}


def percent(value: float) -> str:
    """A share as a percentage with one decimal (``nan``: a dash)."""
    return "–" if math.isnan(value) else f"{100 * value:.1f} %"


def accuracy_cell(entry: dict[str, Any]) -> str:
    """``83.1 % (80.6–85.4)``: accuracy and its 95 % interval."""
    return (f"{percent(entry['value'])} ({100 * entry['low']:.1f}–"
            f"{100 * entry['high']:.1f})")


def points(value: float) -> str:
    """A difference of accuracies in percentage points, signed."""
    return f"{100 * value:+.1f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as the tables docs/drift.md records."""
    pair = report["pair"]
    run = report["run"]
    candidate = run.get("candidate_version")
    lines = [f"**{pair['source']} → {pair['target']}**: trigger `{report['trigger']}`, "
             f"feedback {report['feedback']['accepted']}/{report['feedback']['posted']} "
             f"accepted, run `{run.get('id')}` {run.get('status')}: "
             f"**{run.get('decision')}**", ""]
    header = "| held-out set (through the server) | examples | version 1 |"
    rule = "|---|---:|---:|"
    if candidate:
        header += f" version {candidate} (candidate) | difference, points (95 % CI) |"
        rule += "---:|---:|"
    lines += [header, rule]
    for name, entry in report["evaluation"].items():
        first = entry["1"]
        row = (f"| {SET_NAMES.get(name, name).format(**pair)} | {first['examples']} "
               f"| {accuracy_cell(first)} |")
        if candidate and str(candidate) in entry:
            diff = entry["difference"]
            row += (f" {accuracy_cell(entry[str(candidate)])} | {points(diff['value'])} "
                    f"({points(diff['low'])} .. {points(diff['high'])}) |")
        lines.append(row)
    evaluations = run.get("evaluations") or {}
    heldout = (run.get("data") or {}).get("heldout", {})
    if evaluations.get("active") and evaluations.get("candidate"):
        metric = run.get("gate_metric") or "accuracy"
        lines += ["", f"| the run's gate ({metric}) | examples | active | candidate |",
                  "|---|---:|---:|---:|"]
        for name in ("new_traffic", "original"):
            key = f"{name}/{metric}"
            if key in evaluations["active"] and key in evaluations["candidate"]:
                lines.append(f"| {name} | {heldout.get(name, '–')} "
                             f"| {evaluations['active'][key]:.4f} "
                             f"| {evaluations['candidate'][key]:.4f} |")
    data = run.get("data") or {}
    mix = data.get("mix") or {}
    if data:
        lines += ["", f"Run data: {data.get('original_train')} original rows, feedback "
                  f"{data.get('feedback_train')} train / {data.get('feedback_holdout')} held "
                  f"out, {data.get('train_total')} rows trained; mix: start "
                  f"{mix.get('start')}, replay ratio {mix.get('replay_ratio')}, feedback "
                  f"repeat {mix.get('feedback_repeat')}."]
    if run.get("reason"):
        lines += ["", f"Reason: {run['reason']}"]
    timings = report.get("timings", {})
    if timings:
        lines += ["", "Timings: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f} s"
                                             for k, v in timings.items())]
    return "\n".join(lines)
