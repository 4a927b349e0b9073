"""The drift thread: takes prediction records off a hand-off, keeps windows, exports scores.

All scoring runs here, never on the event loop nor on the engine thread, and uses numpy
only (a second thread running torch ops slows the engine's steps, see README). The
request path only appends to a :class:`~loraswap.service.drift.handoff.Handoff` (no lock, no
wake-up: the thread drains it every ``POLL_SECONDS``); a full hand-off drops the record
and counts it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from loraswap.core.identity import AdapterVersionRef
from loraswap.service.drift.assess import Assessed, assess, scores_of
from loraswap.service.drift.calibration import ALARM_CONFIDENCE
from loraswap.service.drift.handoff import POLL_SECONDS, Handoff
from loraswap.service.drift.metrics import DriftMetrics
from loraswap.service.drift.records import PredictionRecord
from loraswap.service.drift.reference import EMBEDDING, ReferenceProfile
from loraswap.service.drift.windows import VersionWindow

logger = logging.getLogger(__name__)

# A held-out reference under this many values widens its signal's alarm level
# noticeably (its own noise, 1/m, is then at least half a 100-input window's, 1/n).
SMALL_REFERENCE = 200

# Reads a version's reference (profile.json) from the registry; may do I/O.
ReferenceLoader = Callable[[AdapterVersionRef], ReferenceProfile]
# The version of ``tenant/adapter`` serving now (None: none); may do I/O.
ActiveVersion = Callable[[str, str], str | None]


@dataclass(frozen=True)
class DriftConfig:
    """Window and scoring settings (from ``LORASWAP_DRIFT_*``)."""

    window_size: int = 500
    min_samples: int = 100
    score_interval: float = 5.0
    retire_interval: float = 10.0
    max_versions: int = 256
    queue_size: int = 10_000
    reference_refresh: float = 30.0


class DriftMonitor:
    """Live windows per active adapter version and their scores as Prometheus gauges."""

    def __init__(self, config: DriftConfig, metrics: DriftMetrics, references: ReferenceLoader,
                 active_version: ActiveVersion, *,
                 on_retire: Callable[[AdapterVersionRef], None] = lambda ref: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._metrics = metrics
        self._references = references
        self._active_version = active_version
        self._on_retire = on_retire
        self._clock = clock
        self._queue: Handoff[PredictionRecord] = Handoff(config.queue_size, POLL_SECONDS)
        self._stopping = threading.Event()
        self._windows: dict[AdapterVersionRef, VersionWindow] = {}
        self._lock = threading.Lock()  # guards _windows (drift thread vs admin reads)
        self._thread: threading.Thread | None = None
        self._last_retire = clock()
        self._last_refresh = clock()
        # Set after each processed batch of records and each scoring pass (tests wait on it).
        self.scored = threading.Event()

    # ----------------------------------------------------------- request path
    def submit(self, record: PredictionRecord) -> None:
        """Queue one record; never blocks (a full queue drops it)."""
        if not self._queue.put(record):
            self._metrics.dropped.labels("queue_full").inc()

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the drift thread."""
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="loraswap-drift", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the drift thread (records still queued are discarded)."""
        if self._thread is not None:
            self._stopping.set()
            self._queue.wake()
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        next_score = self._clock() + self.config.score_interval
        while not self._stopping.is_set():
            self._queue.wait(next_score - self._clock())
            for record in self._queue.drain():
                try:
                    self.process(record)
                except Exception:  # a bad profile or record must not stop drift monitoring
                    logger.exception("drift monitoring failed on a record")
            if self._clock() >= next_score:
                try:
                    self.score_all()
                except Exception:
                    logger.exception("drift monitoring failed while scoring")
                next_score = self._clock() + self.config.score_interval

    # --------------------------------------------------------- drift thread
    def process(self, record: PredictionRecord) -> None:
        """Add a record to its version's window (retiring older versions of the adapter)."""
        ref = record.ref
        window = self._windows.get(ref)
        if window is None:
            window = self._track(ref)
            if window is None:
                return
        window.add(record)

    def _track(self, ref: AdapterVersionRef) -> VersionWindow | None:
        for other in [r for r in self._windows if r.ref == ref.ref and r != ref]:
            self.retire(other)
        if len(self._windows) >= self.config.max_versions:
            self._metrics.dropped.labels("max_versions").inc()
            return None
        window = VersionWindow(self._references(ref), self.config.window_size)
        with self._lock:
            self._windows[ref] = window
        return window

    def retire(self, ref: AdapterVersionRef) -> None:
        """Forget a version's window and remove its series."""
        with self._lock:
            self._windows.pop(ref, None)
        self._metrics.remove_version(ref)
        self._on_retire(ref)
        logger.info("drift: stopped tracking %s", ref)

    def retire_inactive(self) -> None:
        """Retire windows of versions that no longer serve (promotion, rollback, deletion)."""
        for ref in list(self._windows):
            try:
                active = self._active_version(ref.owner, ref.name)
            except Exception:  # the adapter is gone (or the store failed): not serving
                active = None
            if active != ref.version:
                self.retire(ref)

    def refresh_references(self) -> None:
        """Re-read the reference of each window that has no profile yet (provisional), so
        a profile computed later from an uploaded reference file is used without a restart
        (and the absent signals' reason follows its job: queued, running, failed)."""
        for ref, window in list(self._windows.items()):
            if not window.reference.provisional:
                continue
            try:
                reference = self._references(ref)
            except Exception:  # the store failed, or the version is being deleted
                logger.warning("drift: re-reading the reference of %s failed", ref, exc_info=True)
                continue
            if reference.provisional:
                window.reference = reference  # a newer reason; nothing to score yet
            else:
                window.use_reference(reference)
                logger.info("drift: %s has a profile now", ref)

    def score_all(self) -> None:
        """Recompute the scores of every window that changed; retire stale ones."""
        if self._clock() - self._last_retire >= self.config.retire_interval:
            self._last_retire = self._clock()
            self.retire_inactive()
        if self._clock() - self._last_refresh >= self.config.reference_refresh:
            self._last_refresh = self._clock()
            self.refresh_references()
        for ref, window in list(self._windows.items()):
            if window.dirty:
                window.dirty = False
                self._score(ref, window)
        self.scored.set()

    def _score(self, ref: AdapterVersionRef, window: VersionWindow) -> None:
        self._metrics.window_samples.labels(*ref.labels).set(window.samples)
        if window.samples < self.config.min_samples:
            return
        for item in assess(window, self.config.min_samples):
            self._metrics.set_score(ref, item.signal, item.method, item.score, item.level)

    # ---------------------------------------------------------------- views
    def snapshot(self, tenant: str, adapter: str) -> dict[str, object] | None:
        """The tracked version of an adapter: samples, scores and absent signals."""
        with self._lock:
            found = [(r, w) for r, w in self._windows.items()
                     if (r.owner, r.name) == (tenant, adapter)]
        if not found:
            return None
        ref, window = found[0]
        enough = window.samples >= self.config.min_samples
        # Levels are cached with the window; one the drift thread has not computed yet is
        # computed here (the same value: seeded).
        assessed = assess(window, self.config.min_samples) if enough else []
        return {
            "version": ref.version, "window_samples": window.samples,
            "min_samples": self.config.min_samples,
            "scores": {f"{a.signal}/{a.method}": round(a.score, 6) for a in assessed},
            "signals": {f"{a.signal}/{a.method}": a.view() for a in assessed},
            "alarm": any(a.alarm for a in assessed),
            "alarm_confidence": ALARM_CONFIDENCE,
            "small_references": small_references(assessed),
            "absent_signals": dict(window.reference.missing),
            "label_reference": window.reference.label_source,
            "comparable_generations": len(window.generations),
        }


__all__ = ["DriftConfig", "DriftMonitor", "scores_of"]


def small_references(assessed: list[Assessed]) -> dict[str, str]:
    """Signals whose reference is small enough to widen their alarm level, and by how
    much (what the admin view says when the held-out data was small)."""
    out = {}
    for item in assessed:
        if 0 < item.reference < SMALL_REFERENCE and item.signal != EMBEDDING:
            out[f"{item.signal}/{item.method}"] = (
                f"reference of {item.reference} values (< {SMALL_REFERENCE}): the alarm "
                f"level {item.level:.3g} is wider than a {SMALL_REFERENCE}-value reference "
                "would give; train with more held-out data to narrow it")
    return out
