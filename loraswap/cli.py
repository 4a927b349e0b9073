"""``loraswap``: one command line with subcommands (the entry point of every process).

No command reaches the Hugging Face Hub: importing this module imports the ``loraswap``
package first, which switches the process offline before any subcommand module (some of
which import transformers at their top) is imported (:mod:`loraswap.offline`)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from loraswap.adapters_cmd import adapters_app
from loraswap.bench_cmd import bench_app
from loraswap.model_cmd import model_app
from loraswap.profile_cmd import profile_app
from loraswap.retrain_cmd import retrain_app
from loraswap.train_cmd import train

app = typer.Typer(
    help="Serve many LoRA adapters on one resident base model.", no_args_is_help=True,
    pretty_exceptions_enable=False,
)


app.add_typer(model_app, name="model")
app.add_typer(adapters_app, name="adapters")
app.add_typer(retrain_app, name="retrain")
app.add_typer(profile_app, name="profile")
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
    from pydantic import ValidationError

    from loraswap.core.errors import LoraswapError, describe_problems
    from loraswap.service.app import create_app
    from loraswap.service.health import build_metrics_app
    from loraswap.service.lifecycle import Listeners
    from loraswap.service.lifecycle import serve as serve_until_drained
    from loraswap.service.logging_setup import configure_logging
    from loraswap.service.settings import Settings

    # Options are passed to Settings, not set on it afterwards, so they are validated the
    # same way as the LORASWAP_* variables they override (a port out of range is refused).
    options: dict[str, Any] = {"host": host, "port": port, "dev_mode": True if dev else None}
    try:
        settings = Settings.model_validate({k: v for k, v in options.items() if v is not None})
    except ValidationError as exc:
        typer.echo(f"error: invalid settings: {describe_problems(exc.errors(), 'settings')}",
                   err=True)
        raise typer.Exit(2) from exc
    configure_logging(settings.log_format, settings.log_level)
    try:
        service_app = create_app(settings)
    except LoraswapError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    lifecycle = service_app.state.lifecycle
    metrics_app = (build_metrics_app(service_app.state.loraswap, lifecycle)
                   if settings.metrics_port is not None else None)
    serve_until_drained(service_app, metrics_app, lifecycle, Listeners(
        host=settings.host, port=settings.port, metrics_port=settings.metrics_port))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
