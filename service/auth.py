"""API-key authentication: who is calling, as a :class:`Tenant`.

This is the interim key store (keys from ``LORASWAP_API_KEYS``); tenants with hashed keys in
the registry replace it later behind the same :class:`Authenticator` protocol.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from adapters.errors import AuthenticationError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tenant:
    """An authenticated caller; ``id`` is stable and safe to log (it is not the key)."""

    id: str


class Authenticator(Protocol):
    """Turns the bearer token of a request into a tenant."""

    @property
    def enabled(self) -> bool:
        """Whether requests must carry a key at all."""
        ...

    def authenticate(self, token: str | None) -> Tenant | None:
        """The caller for ``token``; None when auth is off; :class:`AuthenticationError` else."""
        ...


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeyAuthenticator:
    """Static API keys; only their SHA-256 digests are kept in memory.

    With no keys configured, authentication is off and every request is anonymous.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(dict.fromkeys(_digest(k) for k in keys if k))

    @property
    def enabled(self) -> bool:
        """Whether any key is configured."""
        return bool(self._digests)

    def authenticate(self, token: str | None) -> Tenant | None:
        """The tenant of ``token`` (compared in constant time against every known key)."""
        if not self.enabled:
            return None
        if not token:
            raise AuthenticationError(
                "missing API key: send the header 'Authorization: Bearer <key>'"
            )
        presented = _digest(token)
        match: bytes | None = None
        # No early exit: the time taken must not reveal which key (if any) matched.
        for known in self._digests:
            if hmac.compare_digest(presented, known):
                match = known
        if match is None:
            raise AuthenticationError("invalid API key")
        return Tenant(id=f"key-{match.hex()[:8]}")


def log_auth_mode(authenticator: Authenticator) -> None:
    """Say at startup whether the API is protected (a warning when it is open)."""
    if authenticator.enabled:
        logger.info("API key authentication is on")
    else:
        logger.warning("LORASWAP_API_KEYS is not set: the API is open to anyone who can "
                       "reach it")


def fairness_key(tenant: Tenant | None, fallback: str) -> str:
    """The scheduler's fairness key: the tenant, or ``fallback`` when auth is off."""
    return tenant.id if tenant is not None else fallback
