"""``loraswap adapters ...``: adapter utilities for the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from loraswap.adapters.package import TaskKind
from loraswap.base_model.loading import DEFAULT_BASE_MODEL_DIR

adapters_app = typer.Typer(help="Work with LoRA adapters.", no_args_is_help=True)

# Two demo adapters that differ in rank and targets, so that mixed batches are exercised.
DEMO_ADAPTERS: dict[str, tuple[int, tuple[str, ...], int]] = {
    "demo-attn": (8, ("q_proj", "k_proj", "v_proj", "o_proj"), 1),
    "demo-mlp": (16, ("gate_proj", "up_proj", "down_proj"), 2),
}


@adapters_app.command()
def demo(
    dest: Annotated[Path, typer.Option(help="Folder to write the adapters into.")] = Path(
        "demo-adapters"),
    base_model: Annotated[Path, typer.Option(help="Base model folder.")] = DEFAULT_BASE_MODEL_DIR,
) -> None:
    """Write two random (untrained) demo adapters for the base model, to try the service."""
    from loraswap.adapters.demo import write_random_adapter

    for name, (rank, targets, seed) in DEMO_ADAPTERS.items():
        folder = dest / name
        if (folder / "adapter_model.safetensors").exists():
            typer.echo(f"{folder} already exists; kept")
            continue
        write_random_adapter(base_model, folder, rank=rank, targets=targets, seed=seed,
                             scale=0.02)
        typer.echo(f"wrote {folder} (r={rank}, targets={','.join(targets)})")
    typer.echo(f"serve them with: LORASWAP_ADAPTER_DIR={dest} loraswap serve")


@adapters_app.command()
def push(
    package: Annotated[Path, typer.Argument(help="Package folder (or .tar.gz / .zip).")],
    tenant: Annotated[str, typer.Option(help="Tenant that owns the adapter.")],
    name: Annotated[str, typer.Option(help="Adapter name (addressed as tenant/name).")],
    server: Annotated[str, typer.Option(envvar="LORASWAP_URL",
                                        help="Service URL [LORASWAP_URL].")
                      ] = "http://127.0.0.1:8000",
    admin_token: Annotated[str | None, typer.Option(
        envvar="LORASWAP_ADMIN_TOKEN", help="Admin token [LORASWAP_ADMIN_TOKEN].")] = None,
    activate: Annotated[bool | None, typer.Option(
        "--activate/--no-activate",
        help="Make the new version active (default: only if none is active yet).")] = None,
    task: Annotated[TaskKind | None, typer.Option(
        help="Plain PEFT folder: the task (default: from its task_type).")] = None,
    labels: Annotated[str | None, typer.Option(
        help="Plain PEFT folder: class names in head order, comma-separated "
             "(seq-cls / token-cls).")] = None,
    ignore_base_name: Annotated[bool, typer.Option(
        help="Plain PEFT folder: accept a base_model_name_or_path that names another "
             "model (shapes are still checked).")] = False,
) -> None:
    """Register a new version of an adapter on a running service.

    PACKAGE is a loraswap package or a plain PEFT folder (adapter_config.json +
    adapter_model.safetensors, as transformers, TRL, Unsloth or Axolotl save it); for the
    latter the service builds the manifest and this prints what it inferred.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from loraswap.adapters.push import PlainPeftHints, PushTarget, push_package
    from loraswap.core.errors import LoraswapError

    target = PushTarget(server=server, admin_token=admin_token, tenant=tenant, name=name,
                        activate=activate)
    split = tuple(label.strip() for label in labels.split(",")) if labels else ()
    hints = PlainPeftHints(task=task, labels=split, ignore_base_name=ignore_base_name)
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), transient=True) as bar:
        bar_task = bar.add_task(f"uploading {package.name}", total=None)
        try:
            result = push_package(package, target, hints=hints,
                                  progress=lambda sent, total: bar.update(
                                      bar_task, completed=sent, total=total or None))
        except LoraswapError as exc:
            bar.stop()
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
    state = "active" if result.get("active") else "not active (promote it to serve it)"
    typer.echo(f"registered {tenant}/{name} version {result['version']}: {state}")
    for field, origin in (result.get("inferred") or {}).items():
        typer.echo(f"  inferred {field}: {origin}")
