"""``loraswap``: one command line with subcommands (the entry point of every process)."""

from __future__ import annotations

from typing import Annotated

import typer

from loraswap.adapters_cmd import adapters_app
from loraswap.bench_cmd import bench
from loraswap.model_cmd import model_app

app = typer.Typer(
    help="Serve many LoRA adapters on one resident base model.", no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(model_app, name="model")
app.add_typer(adapters_app, name="adapters")
app.command(name="bench", help="Measure throughput and latency (see docs/benchmarks.md).")(bench)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [LORASWAP_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [LORASWAP_PORT].")] = None,
) -> None:
    """Run the HTTP service (configuration from LORASWAP_* variables)."""
    # Heavy imports only for this command, so `loraswap --help` stays fast.
    import uvicorn

    from service.app import create_app
    from service.logging_setup import configure_logging
    from service.settings import Settings

    settings = Settings()
    if host is not None:
        settings.host = host
    if port is not None:
        settings.port = port
    configure_logging(settings.log_format, settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_config=None, timeout_graceful_shutdown=30)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
