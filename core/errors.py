"""The one exception tree of loraswap.

Every error a user can cause or observe derives from :class:`LoraswapError`. Each class
carries a stable machine-readable ``code``; the service maps classes to HTTP statuses in
exactly one place (``service/api/errors.py``), the CLIs print ``str(error)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


class LoraswapError(Exception):
    """Root of every loraswap error; ``code`` is stable and machine-readable."""

    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequestError(LoraswapError):
    """The request is well-formed JSON but asks for something impossible."""

    code = "invalid_request"




class PayloadTooLargeError(InvalidRequestError):
    """An upload or one of its files exceeds a configured size limit."""

    code = "payload_too_large"




class PermissionDeniedError(LoraswapError):
    """The caller is authenticated but may not do this (e.g. a non-admin on /admin)."""

    code = "permission_denied"


class ConflictError(LoraswapError):
    """The request conflicts with the current state (e.g. deleting the active version)."""

    code = "conflict"


class NotFoundError(LoraswapError):
    """A named resource does not exist (or is not visible to the caller)."""

    code = "not_found"




class AdapterNotFoundError(NotFoundError):
    """No adapter of that name is servable."""

    code = "adapter_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"adapter {name!r} not found")
        self.name = name


class AdapterValidationError(LoraswapError):
    """An adapter's files are malformed, unsafe, or incompatible with the base model."""

    code = "adapter_invalid"


class AdapterIncompatibleError(AdapterValidationError):
    """The adapter is well-formed but cannot run on this engine (targets, rank, base)."""

    code = "adapter_incompatible"








class StoreError(LoraswapError):
    """The adapter store (filesystem or S3) failed or cannot be reached."""

    code = "store_unavailable"


class ConfigurationError(LoraswapError):
    """The service's configuration is unsafe or inconsistent; it refuses to start."""

    code = "invalid_configuration"




class ModelLoadError(LoraswapError):
    """The base model folder is missing, incomplete or of an unsupported architecture."""

    code = "model_load_failed"


class QuantizationUnavailableError(ModelLoadError):
    """The requested quantization cannot run on this machine."""

    code = "quantization_unavailable"


class ProvisioningError(LoraswapError):
    """Fetching or converting the base model failed."""

    code = "provisioning_failed"


class RegistryUnreachableError(ProvisioningError):
    """The package registry that ships the base model cannot be reached."""

    code = "registry_unreachable"


def describe_problems(errors: Iterable[Mapping[str, Any]], root: str) -> str:
    """One line naming every bad field of a pydantic ``ValidationError.errors()`` list."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ())) or root}: {err.get('msg', '')}"
        for err in errors
    )


def validated(model: type[ModelT], data: object, *, root: str, error: type[LoraswapError],
              prefix: str) -> ModelT:
    """``data`` validated as ``model``, else ``error("{prefix}: ...")`` naming every bad
    field (``root`` names the document itself)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"{prefix}: {describe_problems(exc.errors(), root)}") from exc
