"""Waiting for something another process or thread does, without a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 60, *, what: str = "the condition",
             interval: float = 0.1, on_fail: Callable[[], str] = lambda: "") -> T:
    """Poll ``condition`` until it returns something truthy, and return that; an
    ``AssertionError`` naming ``what`` (and ``on_fail()``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{on_fail()}")
        time.sleep(interval)
