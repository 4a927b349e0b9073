"""``loraswap adapters ...``: adapter utilities for the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adapters.base_model import DEFAULT_BASE_MODEL_DIR

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
    from adapters.demo import write_random_adapter

    for name, (rank, targets, seed) in DEMO_ADAPTERS.items():
        folder = dest / name
        if (folder / "adapter_model.safetensors").exists():
            typer.echo(f"{folder} already exists; kept")
            continue
        write_random_adapter(base_model, folder, rank=rank, targets=targets, seed=seed,
                             scale=0.02)
        typer.echo(f"wrote {folder} (r={rank}, targets={','.join(targets)})")
    typer.echo(f"serve them with: LORASWAP_ADAPTER_DIR={dest} loraswap serve")
