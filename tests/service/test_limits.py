"""Tenant limits count inputs, not HTTP requests: a batch cannot slip past them."""

from __future__ import annotations

import pytest

from loraswap.core.errors import InvalidRequestError
from loraswap.service.auth import Tenant
from loraswap.service.errors import RateLimitedError
from loraswap.service.limits import TenantLimiter
from loraswap.tenants.directory import TenantPolicy


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_concurrency_counts_every_input_of_a_request() -> None:
    limiter = TenantLimiter(ManualClock())
    tenant = Tenant(id="acme", name="acme", policy=TenantPolicy(max_concurrent=4))
    three = limiter.admit(tenant, cost=3)
    with pytest.raises(RateLimitedError, match="3 requests in flight"):
        limiter.admit(tenant, cost=2)
    one = limiter.admit(tenant, cost=1)
    three.release()
    limiter.admit(tenant, cost=3).release()
    one.release()


def test_rate_counts_every_input_and_refills_with_time() -> None:
    clock = ManualClock()
    limiter = TenantLimiter(clock)
    tenant = Tenant(id="acme", name="acme", policy=TenantPolicy(requests_per_second=4))
    limiter.admit(tenant, cost=4).release()
    with pytest.raises(RateLimitedError, match="requests_per_second=4"):
        limiter.admit(tenant, cost=1)
    clock.now += 0.5  # two tokens back
    limiter.admit(tenant, cost=2).release()
    with pytest.raises(RateLimitedError):
        limiter.admit(tenant, cost=1)


def test_a_request_that_could_never_fit_is_a_400_not_a_429() -> None:
    limiter = TenantLimiter(ManualClock())
    with pytest.raises(InvalidRequestError, match="max_concurrent=2"):
        limiter.admit(Tenant(id="a", name="a", policy=TenantPolicy(max_concurrent=2)), cost=3)
    with pytest.raises(InvalidRequestError, match="requests_per_second=2"):
        limiter.admit(Tenant(id="b", name="b", policy=TenantPolicy(requests_per_second=2)), cost=5)
