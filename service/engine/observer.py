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
        return None

    def adapter_loaded(self, adapter: str, tier: Tier, seconds: float) -> None:
        """An adapter was loaded into ``tier`` in ``seconds``."""
        return None

    def adapter_evicted(self, adapter: str, tier: Tier) -> None:
        """An adapter left ``tier`` to make room."""
        return None

    def resident_adapters(self, tier: Tier, count: int) -> None:
        """``count`` adapters are now resident in ``tier``."""
        return None

    def scheduler_state(self, *, waiting: int, running: int) -> None:
        """Queue depth and running batch size after a scheduler step."""
        return None

    def first_token(self, adapter: str, seconds: float) -> None:
        """Time from arrival to a request's first output token."""
        return None

    def output_token(self, adapter: str, seconds: float) -> None:
        """Time between two output tokens of one request."""
        return None

    def request_finished(self, adapter: str, reason: str, tokens: int) -> None:
        """A request ended with ``reason`` after generating ``tokens`` tokens."""
        return None

    def kv_blocks(self, *, used: int, total: int, cached: int) -> None:
        """KV pool blocks held by running sequences, in the pool, and holding cached
        prefixes nobody uses (after a scheduler step)."""
        return None

    def preempted(self, adapter: str) -> None:
        """A running sequence gave its KV blocks back to be recomputed later."""
        return None

    def prefix_lookup(self, *, queried: int, hit: int) -> None:
        """A prompt's full blocks were looked up in the prefix cache: ``hit`` were found."""
        return None

    def engine_step(self, kind: StepKind, seconds: float, tokens: int) -> None:
        """One forward pass of ``kind`` over ``tokens`` real tokens took ``seconds``."""
        return None


class NullObserver(EngineObserver):
    """Observer that records nothing (tests, benchmarks): every event is the protocol's
    no-op."""
