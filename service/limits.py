"""Per-tenant request-rate and concurrency limits (429 with ``Retry-After``).

Limits come from the tenant's policy in the registry and are enforced by each replica on
its own traffic: with N replicas behind a load balancer a tenant gets at most N times its
limit in total. The state lives in the app's :class:`TenantLimiter`, never in a module.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from loraswap.core.errors import InvalidRequestError
from loraswap.service.auth import Tenant
from loraswap.service.errors import RateLimitedError


@dataclass
class _Bucket:
    """Token bucket: ``tokens`` refill at ``rate`` per second up to ``burst``."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float, cost: float = 1.0) -> float:
        """0 if ``cost`` tokens were taken, else the seconds until they are available."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate


@dataclass
class _TenantUsage:
    bucket: _Bucket | None = None
    in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Lease:
    """One admitted request; :meth:`release` exactly once when it is finished.

    As a context manager it is released when the block ends, unless the block handed it
    to a streamed answer (:meth:`hand_to`), which then releases it when the stream ends.
    """

    def __init__(self, release: Callable[[], None] | None) -> None:
        self._release = release
        self._handed_off = False

    def release(self) -> None:
        """Give the concurrency slot back (idempotent)."""
        if self._release is not None:
            release, self._release = self._release, None
            release()

    def hand_to(self, stream: AsyncIterator[str]) -> AsyncIterator[str]:
        """``stream``, now owning the lease: released when it ends or is dropped."""
        self._handed_off = True
        return release_after(stream, self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._handed_off:
            self.release()


class TenantLimiter:
    """Admits requests within each tenant's rate and concurrency limits."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock  # the time source of the rate buckets (tests pass their own)
        self._usage: dict[str, _TenantUsage] = {}
        self._lock = threading.Lock()

    def _usage_of(self, tenant_id: str) -> _TenantUsage:
        with self._lock:
            return self._usage.setdefault(tenant_id, _TenantUsage())

    def admit(self, tenant: Tenant | None, cost: int = 1) -> Lease:
        """A lease for a request of ``cost`` inputs (each counts as one request against the
        rate and concurrency limits), or :class:`RateLimitedError` naming the limit hit; a
        request that could never fit is a 400."""
        if tenant is None or (tenant.policy.requests_per_second is None
                              and tenant.policy.max_concurrent is None):
            return Lease(None)
        policy = tenant.policy
        _check_fits(tenant, cost)
        usage = self._usage_of(tenant.id)
        with usage.lock:
            if (policy.max_concurrent is not None
                    and usage.in_flight + cost > policy.max_concurrent):
                raise RateLimitedError(
                    f"tenant {tenant.id!r} has {usage.in_flight} requests in flight, its limit "
                    f"is max_concurrent={policy.max_concurrent}", retry_after=1.0)
            if policy.requests_per_second is not None:
                wait = self._take(usage, policy.requests_per_second, cost)
                if wait > 0:
                    raise RateLimitedError(
                        f"tenant {tenant.id!r} exceeded requests_per_second="
                        f"{policy.requests_per_second:g}", retry_after=max(1.0, math.ceil(wait)))
            usage.in_flight += cost

        def release() -> None:
            with usage.lock:
                usage.in_flight -= cost

        return Lease(release)

    def _take(self, usage: _TenantUsage, rate: float, cost: int) -> float:
        now = self.clock()
        bucket = usage.bucket
        if bucket is None or bucket.rate != rate:  # the policy changed: start afresh
            burst = _burst(rate)
            bucket = usage.bucket = _Bucket(rate=rate, burst=burst, tokens=burst, updated=now)
        return bucket.take(now, cost)


def _burst(rate: float) -> float:
    """One second's worth of requests may arrive at once."""
    return max(1.0, rate)


def _check_fits(tenant: Tenant, cost: int) -> None:
    policy = tenant.policy
    if policy.max_concurrent is not None and cost > policy.max_concurrent:
        raise InvalidRequestError(
            f"the request has {cost} inputs, more than tenant {tenant.id!r} may run at once "
            f"(max_concurrent={policy.max_concurrent}): split it")
    if policy.requests_per_second is not None and cost > _burst(policy.requests_per_second):
        raise InvalidRequestError(
            f"the request has {cost} inputs, more than tenant {tenant.id!r} may send in one "
            f"second (requests_per_second={policy.requests_per_second:g}): split it")


async def release_after(stream: AsyncIterator[str], lease: Lease) -> AsyncIterator[str]:
    """Pass a streamed body through and release ``lease`` when it ends or is dropped."""
    try:
        async for chunk in stream:
            yield chunk
    finally:
        lease.release()
