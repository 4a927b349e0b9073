"""``loraswap``: one command line with subcommands (the entry point of every process)."""

from __future__ import annotations

from typing import Annotated

import typer

from loraswap.adapters_cmd import adapters_app
from loraswap.bench_cmd import bench_app
from loraswap.model_cmd import model_app
from loraswap.train_cmd import train

app = typer.Typer(
    help="Serve many LoRA adapters on one resident base model.", no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(model_app, name="model")
app.add_typer(adapters_app, name="adapters")
app.add_typer(bench_app(), name="bench")
app.command(name="train", help="Train a LoRA adapter package (see docs/quality.md).")(train)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [LORASWAP_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [LORASWAP_PORT].")] = None,
    dev: Annotated[bool, typer.Option(
        "--dev", help="Development mode: allow running without an admin token "
        "[LORASWAP_DEV_MODE].")] = False,
) -> None:
    """Run the HTTP service (configuration from LORASWAP_* variables)."""
    # Heavy imports only for this command, so `loraswap --help` stays fast.
    import uvicorn

    from adapters.errors import LoraswapError
    from service.app import create_app
    from service.logging_setup import configure_logging
    from service.settings import Settings

    settings = Settings()
    if host is not None:
        settings.host = host
    if port is not None:
        settings.port = port
    if dev:
        settings.dev_mode = True
    configure_logging(settings.log_format, settings.log_level)
    try:
        service_app = create_app(settings)
    except LoraswapError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    uvicorn.run(service_app, host=settings.host, port=settings.port,
                log_config=None, timeout_graceful_shutdown=30)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
