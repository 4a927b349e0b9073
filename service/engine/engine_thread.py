"""The one thread that runs torch work.

Every torch call of the service (loading the base model, decoding adapters, every prefill
and decode step) runs on this thread. Measured here: once any second thread has run a
parallel torch op, the engine thread's decode steps are about 30% slower for the rest of
the process (two OpenMP thread teams on two cores), so adapter reads are not sent to a
thread pool but queued here, between steps.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol, TypeVar

import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")


class EngineDriver(Protocol):
    """Work the thread runs repeatedly while there is any (the scheduler)."""

    def has_work(self) -> bool:
        """Whether a step would do something now."""
        ...

    def step(self) -> None:
        """One iteration of work; must not raise."""
        ...

    def shutdown(self) -> None:
        """Fail or finish whatever is pending; called once, on the thread, when stopping."""
        ...


class EngineThread:
    """A thread that runs queued calls and, between them, steps of its driver."""

    def __init__(self, num_threads: int | None = None, name: str = "loraswap-engine") -> None:
        self._num_threads = num_threads
        self._cond = threading.Condition()
        self._calls: list[tuple[Callable[[], object], Future[object]]] = []
        self._driver: EngineDriver | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def started(self) -> bool:
        """Whether :meth:`start` ran."""
        return self._thread.ident is not None

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Shut the driver down on the thread and end it."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self.started:
            self._thread.join(timeout=timeout)

    def drive(self, driver: EngineDriver) -> None:
        """Run ``driver``'s steps whenever it has work."""
        with self._cond:
            self._driver = driver
            self._cond.notify_all()

    def release(self, driver: EngineDriver) -> None:
        """Stop stepping ``driver`` and shut it down on the thread; the thread goes on."""
        def detach() -> None:
            if self._driver is driver:
                self._driver = None
            driver.shutdown()

        self.call(detach).result(timeout=60)

    def wake(self) -> None:
        """Look for work now (new request, cancellation)."""
        with self._cond:
            self._cond.notify_all()

    def call(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the thread, between two steps; its result comes back as a future."""
        future: Future[T] = Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("engine thread is stopping")
            self._calls.append((fn, future))  # type: ignore[arg-type]
            self._cond.notify_all()
        return future

    async def run(self, fn: Callable[[], T]) -> T:
        """Await ``fn`` run on the thread."""
        return await asyncio.wrap_future(self.call(fn))

    def _run(self) -> None:
        if self._num_threads is not None:
            torch.set_num_threads(self._num_threads)
        while True:
            with self._cond:
                while not (self._stopping or self._calls or self._driver_has_work()):
                    self._cond.wait()
                if self._stopping:
                    break
                calls, self._calls = self._calls, []
            for fn, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:  # delivered to the awaiting caller
                        future.set_exception(exc)
            if self._driver is not None and self._driver.has_work():
                self._driver.step()
        self._finish()

    def _driver_has_work(self) -> bool:
        return self._driver is not None and self._driver.has_work()

    def _finish(self) -> None:
        with self._cond:
            calls, self._calls = self._calls, []
        for _, future in calls:
            future.cancel()
        if self._driver is not None:
            try:
                self._driver.shutdown()
            except Exception:
                logger.exception("engine shutdown failed")
