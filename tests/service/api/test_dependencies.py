"""Request dependencies run on the event loop, not on FastAPI's thread pool."""

from __future__ import annotations

import inspect

from loraswap.service.api import deps


def test_every_request_dependency_is_a_coroutine() -> None:
    """FastAPI runs a plain ``def`` dependency on its thread pool: a thread hop per
    dependency per request, which under load waits for the GIL behind the engine thread
    (the overload run answered more than twice as many requests a second without the four
    hops of an inference route: docs/reliability.md, "Overload")."""
    functions = [value for name, value in vars(deps).items()
                 if inspect.isfunction(value) and value.__module__ == deps.__name__
                 and not name.startswith("_")]
    assert len(functions) >= 7
    assert [f.__name__ for f in functions if not inspect.iscoroutinefunction(f)] == []
