"""What the engine reports as it runs; the service implements it with Prometheus metrics."""

from __future__ import annotations

from typing import Literal, Protocol

Tier = Literal["slot", "host"]
StepKind = Literal["prefill", "decode", "encode"]
"""A forward pass of the runner: prompts into the cache, one token per running sequence, or
prompts of classification requests (no cache)."""


class EngineObserver(Protocol):
    """Receives engine events. Called from the engine thread: implementations must be cheap
    and thread-safe."""

    def adapter_lookup(self, tier: Tier, *, hit: bool) -> None:
        """An adapter was looked up in ``tier``."""

    def adapter_loaded(self, adapter: str, tier: Tier, seconds: float) -> None:
        """An adapter was loaded into ``tier`` in ``seconds``."""

    def adapter_evicted(self, adapter: str, tier: Tier) -> None:
        """An adapter left ``tier`` to make room."""

    def resident_adapters(self, tier: Tier, count: int) -> None:
        """``count`` adapters are now resident in ``tier``."""

    def scheduler_state(self, *, waiting: int, running: int) -> None:
        """Queue depth and running batch size after a scheduler step."""

    def first_token(self, adapter: str, seconds: float) -> None:
        """Time from arrival to a request's first output token."""

    def output_token(self, adapter: str, seconds: float) -> None:
        """Time between two output tokens of one request."""

    def request_finished(self, adapter: str, reason: str, tokens: int) -> None:
        """A request ended with ``reason`` after generating ``tokens`` tokens."""

    def engine_step(self, kind: StepKind, seconds: float, tokens: int) -> None:
        """One forward pass of ``kind`` over ``tokens`` real tokens took ``seconds``."""


class NullObserver:
    """Observer that records nothing (tests, benchmarks)."""

    def adapter_lookup(self, tier: Tier, *, hit: bool) -> None:
        """Ignore."""

    def adapter_loaded(self, adapter: str, tier: Tier, seconds: float) -> None:
        """Ignore."""

    def adapter_evicted(self, adapter: str, tier: Tier) -> None:
        """Ignore."""

    def resident_adapters(self, tier: Tier, count: int) -> None:
        """Ignore."""

    def scheduler_state(self, *, waiting: int, running: int) -> None:
        """Ignore."""

    def first_token(self, adapter: str, seconds: float) -> None:
        """Ignore."""

    def output_token(self, adapter: str, seconds: float) -> None:
        """Ignore."""

    def request_finished(self, adapter: str, reason: str, tokens: int) -> None:
        """Ignore."""

    def engine_step(self, kind: StepKind, seconds: float, tokens: int) -> None:
        """Ignore."""
