"""``loraswap retrain run --run-id ID``: one retraining run (started by the service)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

retrain_app = typer.Typer(help="Retraining runs (started by POST /admin/retrain).",
                          no_args_is_help=True)


@retrain_app.command("run")
def run(run_id: Annotated[str, typer.Option("--run-id", help="The run to execute.")]) -> None:
    """Train, evaluate and decide one run recorded in the store (LORASWAP_* settings)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from loraswap.service.settings import Settings
    from loraswap.training.retrain import RetrainSettings, execute_run

    settings = Settings()
    record = execute_run(run_id, RetrainSettings(
        store_uri=settings.store_uri, base_model=settings.base_model,
        cache_dir=settings.adapter_cache_dir / ".retrain",
        feedback_holdout=settings.retrain_feedback_holdout,
        min_gain=settings.retrain_min_gain, warm_start=settings.retrain_warm_start,
        replay_ratio=settings.retrain_replay_ratio,
        feedback_repeat=settings.retrain_feedback_repeat))
    typer.echo(f"run {record.id}: {record.status}, {record.decision}: {record.reason}")
    if record.status == "failed":
        raise typer.Exit(1)
