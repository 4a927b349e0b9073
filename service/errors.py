"""Errors of the service: requests, limits, the engine's lifecycle.

They belong to the one exception tree rooted at :class:`loraswap.core.errors.LoraswapError`
(mapped to HTTP statuses in ``service/api/errors.py``), but only the service raises them:
``adapters/`` keeps the errors of the adapter format, the store, the registry and the base
model.
"""

from __future__ import annotations

from loraswap.core.errors import InvalidRequestError, LoraswapError, NotFoundError


class InputTooLongError(InvalidRequestError):
    """The prompt (after templating) has more tokens than the configured limit."""

    code = "input_too_long"


class AuthenticationError(LoraswapError):
    """The request carries no API key, or one that is not valid."""

    code = "invalid_api_key"


class OverloadedError(LoraswapError):
    """The server cannot take more work right now; retry after ``retry_after`` seconds."""

    code = "overloaded"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimitedError(OverloadedError):
    """A tenant exceeded its request-rate or concurrency limit."""

    code = "rate_limited"


class NotReadyError(LoraswapError):
    """The service is starting or stopping and cannot answer yet."""

    code = "not_ready"


class RequestCancelledError(LoraswapError):
    """The client went away or the request was aborted."""

    code = "cancelled"


class RowFailedError(LoraswapError):
    """One row of a batch produced no usable token (non-finite logits, sampling failed)."""

    code = "generation_failed"


class FeatureDisabledError(NotFoundError):
    """The route belongs to a feature this server runs without (404 naming the setting)."""

    code = "feature_disabled"


class UnsupportedSchemaError(InvalidRequestError):
    """A ``response_format`` schema or tool grammar that is too large, or uses a JSON Schema
    construct the grammar engine does not enforce (named in the message)."""

    code = "unsupported_schema"
