"""Request dependencies run on the event loop, not on FastAPI's thread pool."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts

from loraswap.service.app import create_app
from loraswap.service.settings import Settings


def walk(dependant: Dependant, path: str) -> Iterator[tuple[str, Any]]:
    """Every dependency under ``dependant`` (sub-dependencies too), with where it is used."""
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield f"{path} -> {getattr(sub.call, '__qualname__', sub.call)}", sub.call
        yield from walk(sub, path)


def runs_on_the_loop(call: Any) -> bool:
    """What FastAPI awaits instead of sending to its thread pool: a coroutine function,
    or an object whose ``__call__`` is one (FastAPI's own security classes)."""
    return inspect.iscoroutinefunction(call) or (
        not inspect.isfunction(call) and not inspect.isclass(call)
        and inspect.iscoroutinefunction(type(call).__call__))


def test_every_request_dependency_is_a_coroutine(tmp_path: Path) -> None:
    """FastAPI runs a plain ``def`` dependency on its thread pool: a thread hop per
    dependency per request, which under load waits for the GIL behind the engine thread
    (the overload run answered more than twice as many requests a second without the four
    hops of an inference route: docs/reliability.md, "Overload"). Every dependency of every
    route of the real app is walked, wherever it is declared (api/, drift/, ...)."""
    app = create_app(Settings(dev_mode=True, store_uri=(tmp_path / "store").as_uri(),
                              adapter_cache_dir=tmp_path / "cache"))
    # FastAPI >= 0.165 keeps included routers lazily: this is how its OpenAPI sees them.
    routes = [r for r in iter_route_contexts(app.routes)
              if isinstance(getattr(r, "dependant", None), Dependant)]
    used = [(f"{sorted(r.methods or ())} {r.path}{where}", call) for r in routes
            for where, call in walk(r.dependant, "")]
    assert len(routes) >= 20 and len(used) >= 40, (len(routes), len(used))
    assert any("/v1/feedback" in where for where, _ in used)
    assert [where for where, call in used if not runs_on_the_loop(call)] == []
