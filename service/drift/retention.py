"""The retention sweeper: captured data older than ``LORASWAP_CAPTURE_RETENTION_DAYS`` and
data of tenants that no longer exist are deleted from the store.

One asyncio task per replica (every replica sweeps; deleting twice is harmless) runs
:meth:`loraswap.jobs.tenant_data.TenantData.sweep` on a worker thread every
``LORASWAP_CAPTURE_SWEEP_SECONDS``, whether or not drift is on (data captured while it
was on still expires). It runs off the event loop and never raises: a store failure is
logged and retried at the next sweep.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from loraswap.core.errors import StoreError
from loraswap.jobs.tenant_data import SweepReport, TenantData
from loraswap.tenants.directory import TenantDirectory

logger = logging.getLogger(__name__)


class RetentionSweeper:
    """Expires captured data and removes data of deleted tenants, periodically."""

    def __init__(self, data: TenantData, tenants: TenantDirectory, *, retention_days: float,
                 interval_seconds: float) -> None:
        self.data = data
        self.tenants = tenants
        self.retention = timedelta(days=retention_days)
        self.interval = interval_seconds
        self.last: SweepReport | None = None

    def live_owners(self) -> set[str] | None:
        """The data owners of every tenant, or None when a tenant record could not be read
        (then no data is treated as orphaned: an unreadable tenant still owns its data)."""
        try:
            records = self.tenants.list()
        except StoreError:
            return None
        if self.tenants.unreadable_records():
            return None
        return {record.data_owner for record in records}

    def sweep(self) -> SweepReport:
        """One sweep (blocking store I/O)."""
        report = self.data.sweep(self.retention, self.live_owners)
        self.last = report
        if report.expired or report.orphaned or report.errors:
            logger.info("data sweep: %d objects past retention (%s) and %d of deleted tenants "
                        "deleted; %d failures%s", report.expired, self.retention,
                        report.orphaned, len(report.errors),
                        f" (first: {report.errors[0]})" if report.errors else "")
        if not report.owners_checked:
            logger.warning("data sweep: the tenant list could not be read completely; data "
                           "of deleted tenants is kept until a later sweep")
        return report

    async def run(self) -> None:
        """Sweep now and then every ``interval`` seconds, until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.sweep)
            except Exception:  # the store failing must not end the sweeper for good
                logger.exception("data sweep failed; retried in %.0f s", self.interval)
            await asyncio.sleep(self.interval)
