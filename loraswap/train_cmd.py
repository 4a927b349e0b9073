"""``loraswap train``: train a LoRA adapter package (mounted by ``loraswap.cli``).

Its options are generated from :class:`~loraswap.training.config.TrainConfig`: one flag per
field (``--lora-<name>`` for the LoRA settings), with the field's description as help and
its default as :func:`~loraswap.training.config.default_text` shows it, so a new field is a
new flag and no default is written twice. Every generated flag defaults to None (not
given), so that a ``--config`` file's value stands unless the flag overrides it.
"""

from __future__ import annotations

import enum
import inspect
import logging
import os
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic.fields import FieldInfo
from rich.console import Console
from rich.markup import escape

from loraswap.core.errors import ConfigurationError, LoraswapError
from loraswap.training.config import LoraSettings, TrainConfig, default_text

ADMIN_TOKEN_ENV = "LORASWAP_ADMIN_TOKEN"
Opt = typer.Option
# Short spellings kept beside the generated ``--learning-rate`` and ``--data-format``.
ALIASES: dict[str, tuple[str, ...]] = {"learning_rate": ("--lr",),
                                       "data_format": ("--format",)}
# A list field is one flag whose value is split on commas.
LIST_SEPARATOR = ","
LIST_HELP = "Comma-separated."


def config_fields() -> Iterator[tuple[str, str, FieldInfo, str | None]]:
    """``(parameter, dotted name, field, default text)`` of every settable field:
    TrainConfig's own, then LoraSettings' as ``lora_<name>``."""
    for name, field in TrainConfig.model_fields.items():
        if name != "lora":
            yield name, name, field, default_text(TrainConfig, name)
    for name, field in LoraSettings.model_fields.items():
        path = f"lora.{name}"
        yield f"lora_{name}", path, field, default_text(LoraSettings, name, path)


def _value_type(annotation: Any) -> tuple[Any, str]:
    """The CLI type of a field's annotation, and a sentence about its values for help."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        return str, LIST_HELP
    if typing.get_origin(annotation) is Literal:
        return str, f"Values: {', '.join(map(str, typing.get_args(annotation)))}."
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return str, f"Values: {', '.join(str(m.value) for m in annotation)}."
    if annotation in (bool, int, float, str, Path):
        return annotation, ""
    raise TypeError(f"no CLI type for a TrainConfig field of type {annotation!r}")


def field_help(field: FieldInfo, values: str, default: str | None) -> str:
    """A flag's help: the description, its values, and its default (or that it is
    required unless the --config file gives it)."""
    parts = [field.description or ""]
    if values:
        parts.append(values)
    parts.append("Required unless the --config file sets it." if default is None
                 else f"Default: {default}.")
    return " ".join(p for p in parts if p)


def _option(param: str, field: FieldInfo, default: str | None) -> inspect.Parameter:
    kind, values = _value_type(field.annotation)
    flag = "--" + param.replace("_", "-")
    decls = (f"{flag}/--no-{flag[2:]}",) if kind is bool else (flag, *ALIASES.get(param, ()))
    option = typer.Option(*decls, help=field_help(field, values, default),
                          show_default=False)
    return inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[kind | None, option])


def _overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Flag values as :func:`build_config` takes them (lists split on commas)."""
    found: dict[str, Any] = {}
    for param, _, field, _ in config_fields():
        value = values.get(param)
        if isinstance(value, str) and _value_type(field.annotation)[1] == LIST_HELP:
            value = [v.strip() for v in value.split(LIST_SEPARATOR) if v.strip()]
        found[param] = value
    return found


def _run(config: Path | None, push: str | None, admin_token: str | None,
         overrides: dict[str, Any]) -> None:
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    token = admin_token or os.environ.get(ADMIN_TOKEN_ENV)
    try:
        from loraswap.training.config import build_config, read_config_file
        from loraswap.training.runner import run_training

        file_values = read_config_file(config) if config is not None else {}
        cfg = build_config(file_values, overrides)
        if push is not None and not (cfg.tenant and cfg.name and token):
            raise ConfigurationError("--push needs --tenant, --name and an admin token "
                                     f"(--admin-token or {ADMIN_TOKEN_ENV})")
        outcome = run_training(cfg)
        metrics = ", ".join(f"{k}={v:.4f}" for k, v in outcome.manifest.metrics.items())
        typer.echo(f"wrote {outcome.output} in {outcome.seconds:.0f}s ({metrics})")
        if push is not None:
            from loraswap.adapters.push import PushTarget, push_package

            assert cfg.tenant and cfg.name and token
            # A copy of the training data goes to the store first, recorded in the
            # manifest, so retraining (docs/drift.md) finds what this version learnt from.
            from loraswap.jobs.training_data import upload_via_service
            from loraswap.training.retrain import record_data_store

            data_files = {"train": cfg.data, **({"test": cfg.test_data} if cfg.test_data
                                                else {})}
            keys = upload_via_service(push, token, cfg.tenant, cfg.name, data_files)
            # How to read them (format, columns) is in the training config already.
            record_data_store(outcome.output, keys)
            typer.echo(f"training data copied to the store: {', '.join(keys.values())}")
            reply = push_package(outcome.output, PushTarget(
                server=push, admin_token=token, tenant=cfg.tenant, name=cfg.name))
            typer.echo(f"pushed to {push}: {cfg.tenant}/{cfg.name} version {reply['version']}")
    except LoraswapError as exc:
        err.print(f"[red]error:[/red] {escape(exc.message)}")
        raise typer.Exit(code=1) from None


def _train_command() -> Callable[..., None]:
    """The ``train`` command: the generated field flags plus ``--config``, ``--push`` and
    ``--admin-token``."""
    fixed = [
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation=Annotated[Path | None, Opt(
                              "--config", help="YAML or JSON file of settings (the "
                              "fields below); flags given too override it.")]),
        inspect.Parameter("push", inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation=Annotated[str | None, Opt(
                              "--push", help="Service URL to upload the package to (needs "
                              "--tenant and --name).")]),
        inspect.Parameter("admin_token", inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation=Annotated[str | None, Opt(
                              help=f"Admin token for --push [{ADMIN_TOKEN_ENV}].")]),
    ]
    generated = [_option(param, field, default) for param, _, field, default in config_fields()]

    def train(**values: Any) -> None:
        """Train a LoRA adapter (seq-cls, token-cls or causal-lm) and write its package."""
        _run(values.pop("config"), values.pop("push"), values.pop("admin_token"),
             _overrides(values))

    parameters = fixed + generated
    train.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    train.__annotations__ = {p.name: p.annotation for p in parameters}
    return train


train = _train_command()
