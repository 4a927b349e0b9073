"""``loraswap profile run``: one profiling job (started by the service's admin upload)."""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

profile_app = typer.Typer(
    help="Drift profiles of adapter versions registered without profile.json (started by "
    "PUT /admin/adapters/{tenant}/{name}/versions/{version}/reference/{file}).",
    no_args_is_help=True)


@profile_app.command("run")
def run(
    tenant: Annotated[str, typer.Option(help="The adapter's tenant.")],
    adapter: Annotated[str, typer.Option(help="The adapter's name.")],
    version: Annotated[int, typer.Option(help="The adapter version to profile.")],
    job_id: Annotated[str, typer.Option("--job-id", help="The job the version's record "
                                        "must name (a replaced job does nothing).")],
) -> None:
    """Compute profile.json of a version from its uploaded reference file (LORASWAP_*
    settings name the store and the base model)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from loraswap.service.settings import Settings
    from loraswap.training.profile_job import ProfileJobSettings, cpu_precision, execute_job

    settings = Settings()
    logging.info("profiling %s/%s version %d, job %s, at nice %d", tenant, adapter, version,
                 job_id, os.nice(0))
    record = execute_job(tenant, adapter, version, job_id, ProfileJobSettings(
        store_uri=settings.store_uri, base_model=settings.base_model,
        cache_dir=settings.adapter_cache_dir / ".profile",
        quantization=cpu_precision(settings.quantization)))
    if record is None:
        typer.echo(f"job {job_id}: replaced by a later upload; nothing written")
        return
    typer.echo(f"job {record.id}: {record.status}"
               + (f": {record.reason}" if record.reason else ""))
    if record.status == "failed":
        raise typer.Exit(1)
