"""``loraswap bench loop``'s command line: flags, ``--quick`` sizes, the report's output.

The loop itself is :func:`loraswap.bench.loop.run_loop`.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from loraswap.base_model.precision import CpuFeatures
from loraswap.bench.loop import LoopOptions, run_loop
from loraswap.bench.loop_data import DATASETS
from loraswap.bench.loop_report import markdown

QUICK = {"train_rows": 160, "test_rows": 60, "train_steps": 8, "batch_size": 8,
         "max_length": 48, "lora_r": 4, "traffic_rows": 160, "feedback_rows": 120,
         "eval_rows": 60, "window": 100}
"""``--quick``: sizes for a test (minutes on the real model, seconds on a tiny one)."""


def main(
    source: Annotated[str, typer.Option(help="Dataset the adapter is trained on: "
                                        f"{', '.join(DATASETS)}.")] = "sst2",
    target: Annotated[str, typer.Option(help="Dataset sent as the new traffic.")] = "tweets",
    data_root: Annotated[Path, typer.Option(help="The real datasets (SOURCES.md).")] =
        LoopOptions.data_root,
    base_model: Annotated[Path | None, typer.Option(
        help="Base model folder (default: the service's).")] = None,
    train_rows: Annotated[int, typer.Option(min=8, help="Source rows version 1 trains on.")]
        = LoopOptions.train_rows,
    test_rows: Annotated[int, typer.Option(min=8, help="Source test rows (the original "
                                           "held-out set).")] = LoopOptions.test_rows,
    train_steps: Annotated[int, typer.Option(min=1, help="Steps of version 1 (and of the "
                                             "candidate: the run reuses its settings).")]
        = LoopOptions.train_steps,
    batch_size: Annotated[int, typer.Option(min=1)] = LoopOptions.batch_size,
    max_length: Annotated[int, typer.Option(min=8)] = LoopOptions.max_length,
    lora_r: Annotated[int, typer.Option(min=1)] = LoopOptions.lora_r,
    traffic_rows: Annotated[int, typer.Option(min=10, help="Target rows sent through "
                                              "/v1/predict.")] = LoopOptions.traffic_rows,
    feedback_rows: Annotated[int, typer.Option(min=1, help="Of those, how many get their "
                                               "true label as feedback.")]
        = LoopOptions.feedback_rows,
    eval_rows: Annotated[int, typer.Option(min=8, help="Target test rows both versions are "
                                           "judged on.")] = LoopOptions.eval_rows,
    window: Annotated[int, typer.Option(min=10, help="Drift window and the rule's sample "
                                        "minimum.")] = LoopOptions.window,
    threads: Annotated[int, typer.Option(min=1, help="torch threads of server and runs.")]
        = LoopOptions.threads,
    trigger: Annotated[str, typer.Option(help="alertmanager (real Prometheus + "
                                         "Alertmanager), webhook (post the payload), auto.")]
        = LoopOptions.trigger,
    replay_ratio: Annotated[float, typer.Option(min=0, help="LORASWAP_RETRAIN_REPLAY_RATIO "
                                                "of the server.")] = LoopOptions.replay_ratio,
    feedback_repeat: Annotated[int, typer.Option(min=1, help="LORASWAP_RETRAIN_FEEDBACK_"
                                                 "REPEAT.")] = LoopOptions.feedback_repeat,
    warm_start: Annotated[bool, typer.Option(help="LORASWAP_RETRAIN_WARM_START.")] = True,
    quick: Annotated[bool, typer.Option("--quick", help="Test sizes (overrides the size "
                                        "flags): " + ", ".join(
                                            f"{k}={v}" for k, v in QUICK.items()))] = False,
    seed: Annotated[int, typer.Option()] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Save the report.")] = None,
) -> None:
    """Train on one real dataset, serve with drift on, send another with feedback, let the
    alert retrain, and judge both versions on held-out data of both datasets."""
    if trigger not in ("auto", "alertmanager", "webhook"):
        raise typer.BadParameter("--trigger is auto, alertmanager or webhook")
    for name in (source, target):
        if name not in DATASETS:
            raise typer.BadParameter(f"unknown dataset {name!r}; choose {sorted(DATASETS)}")
    sizes = dict(train_rows=train_rows, test_rows=test_rows, train_steps=train_steps,
                 batch_size=batch_size, max_length=max_length, lora_r=lora_r,
                 traffic_rows=traffic_rows, feedback_rows=feedback_rows,
                 eval_rows=eval_rows, window=window)
    options = LoopOptions(source=source, target=target, data_root=data_root,
                          base_model=base_model, threads=threads, trigger=trigger,
                          replay_ratio=replay_ratio, feedback_repeat=feedback_repeat,
                          warm_start=warm_start, seed=seed, **(QUICK if quick else sizes))
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    report = run_loop(options, log=lambda line: typer.echo(line, err=True))
    report.update(command=" ".join(sys.argv), started=started.isoformat(timespec="seconds"),
                  finished=datetime.now(UTC).isoformat(timespec="seconds"),
                  cpu=CpuFeatures.detect().describe(),
                  load_average={"before": load_before, "after": os.getloadavg()})
    text = json.dumps(report, indent=2)
    if json_out is not None:
        json_out.write_text(text + "\n", encoding="utf-8")
    typer.echo(text)
    typer.echo(markdown(report))
