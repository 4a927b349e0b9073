"""Who is calling: API keys become a :class:`Tenant`; what a tenant may reach.

Two kinds of keys exist. Registry tenants (created through ``/admin/tenants``) own the
adapters addressed ``tenant/name``; their keys are stored hashed in the shared store, so a
key created on one replica works on every replica. Static keys from ``LORASWAP_API_KEYS``
are operator keys: base model and development adapters only.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from loraswap.core.errors import AdapterNotFoundError, PermissionDeniedError
from loraswap.core.identity import AdapterRef
from loraswap.service.errors import AuthenticationError
from loraswap.tenants.directory import TenantDirectory, TenantPolicy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tenant:
    """An authenticated caller; ``id`` is stable and safe to log (it is not the key).

    ``name`` is the registry tenant that owns adapters (None for static operator keys).
    """

    id: str
    name: str | None = None
    policy: TenantPolicy = field(default_factory=TenantPolicy)


class Authenticator(Protocol):
    """Turns the bearer token of a request into a tenant."""

    @property
    def enabled(self) -> bool:
        """Whether requests must carry a key at all."""
        ...

    def authenticate(self, token: str | None) -> Tenant | None:
        """The caller for ``token``; None for an anonymous caller; 401 for a bad key."""
        ...


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


class ApiKeyAuthenticator:
    """Static API keys; only their SHA-256 digests are kept in memory.

    With no keys configured (and ``required`` False), authentication is off and every
    request is anonymous.
    """

    def __init__(self, keys: Iterable[str], *, required: bool = False) -> None:
        self._digests = tuple(dict.fromkeys(_digest(k) for k in keys if k))
        self._required = required

    @property
    def enabled(self) -> bool:
        """Whether a request without a key is refused."""
        return self._required or bool(self._digests)

    def match(self, token: str) -> Tenant | None:
        """The static-key caller for ``token``, or None (constant time over all keys)."""
        presented = _digest(token)
        found: bytes | None = None
        # No early exit: the time taken must not reveal which key (if any) matched.
        for known in self._digests:
            if hmac.compare_digest(presented, known):
                found = known
        return None if found is None else Tenant(id=f"key-{found.hex()[:8]}")

    def authenticate(self, token: str | None) -> Tenant | None:
        """The caller of ``token``; None (anonymous) when no key is needed and none given."""
        if not token:
            if self.enabled:
                raise AuthenticationError(
                    "missing API key: send the header 'Authorization: Bearer <key>'"
                )
            return None
        tenant = self.match(token)
        if tenant is None and self.enabled:
            raise AuthenticationError("invalid API key")
        # Open API (dev mode): an unknown key is an anonymous caller, since SDKs such as
        # OpenAI's always send one; a tenant's key still identifies that tenant.
        return tenant


class TenantAuthenticator(ApiKeyAuthenticator):
    """Registry tenants' keys first, then static keys."""

    def __init__(self, tenants: TenantDirectory, keys: Iterable[str], *,
                 required: bool) -> None:
        super().__init__(keys, required=required)
        self._tenants = tenants

    def match(self, token: str) -> Tenant | None:
        """Tenant whose (hashed) key is ``token``; static keys when no tenant has it."""
        record = self._tenants.authenticate(token)
        if record is not None:
            return Tenant(id=record.name, name=record.name, policy=record.policy)
        return super().match(token)


def check_admin_token(configured: str | None, presented: str | None) -> None:
    """401 unless ``presented`` is the admin token (anything passes in dev mode without one).

    Both sides are hashed first, so the comparison takes the same time whatever the length.
    """
    if configured is None:
        return  # Settings.check_secure allowed this: dev mode
    if not presented:
        raise AuthenticationError(
            "missing admin token: send 'Authorization: Bearer <LORASWAP_ADMIN_TOKEN>'")
    if not hmac.compare_digest(_digest(presented), _digest(configured)):
        raise AuthenticationError("invalid admin token")


def check_webhook_token(admin: str | None, webhook: str | None,
                        presented: str | None) -> None:
    """401 unless ``presented`` is the retrain webhook's token or the admin token (an
    operator replays an alert with it); open like ``/admin`` in dev mode without tokens."""
    if admin is None and webhook is None:
        return
    if presented and webhook is not None and hmac.compare_digest(
            _digest(presented), _digest(webhook)):
        return
    if admin is None:
        raise AuthenticationError(
            "missing or invalid webhook token: send 'Authorization: Bearer "
            "<LORASWAP_RETRAIN_WEBHOOK_TOKEN>'")
    check_admin_token(admin, presented)


def check_metrics_token(admin: str | None, metrics: str | None,
                        presented: str | None) -> None:
    """401 unless ``presented`` is the metrics token or the admin token: ``/metrics`` on the
    API port names every tenant and adapter. Open in dev mode (no admin token)."""
    if admin is None:
        return
    if presented and metrics is not None and hmac.compare_digest(
            _digest(presented), _digest(metrics)):
        return
    if not presented:
        raise AuthenticationError(
            "missing token: /metrics on the API port needs 'Authorization: Bearer "
            "<LORASWAP_METRICS_TOKEN>' (or the admin token); LORASWAP_METRICS_PORT serves "
            "it on a separate listener instead")
    check_admin_token(admin, presented)


def log_auth_mode(authenticator: Authenticator) -> None:
    """Say at startup whether the API is protected (a warning when it is open)."""
    if authenticator.enabled:
        logger.info("API key authentication is on")
    else:
        logger.warning("no admin token and no LORASWAP_API_KEYS: the inference API is open to "
                       "anyone who can reach it (tenant adapters still need their key)")


def check_access(tenant: Tenant | None, adapter: str | None) -> None:
    """Refuse what the caller may not use.

    ``tenant/name`` adapters belong to that tenant alone; for anyone else the adapter does
    not exist (404, the same answer as for a missing adapter, so names do not leak).
    Plain names are development adapters from ``LORASWAP_ADAPTER_DIR``, open to all.
    """
    if adapter is None:
        if tenant is not None and not tenant.policy.allow_base_model:
            raise PermissionDeniedError(
                f"tenant {tenant.id!r} may not call the base model (policy "
                "allow_base_model=false): name one of its adapters"
            )
        return
    ref = AdapterRef.parse(adapter)
    if ref.is_registered and not ref.owned_by(tenant.name if tenant is not None else None):
        raise AdapterNotFoundError(adapter)


def fairness_key(tenant: Tenant | None, fallback: str) -> str:
    """The scheduler's fairness key: the tenant, or ``fallback`` when auth is off."""
    return tenant.id if tenant is not None else fallback
