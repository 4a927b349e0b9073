"""A retraining run that finishes after an operator acted cannot undo it (issue 23,
finding 4): promotion is a compare-and-swap on the version active at the run's start."""

from __future__ import annotations

from pathlib import Path

from loraswap.adapters.registry import AdapterRegistry
from loraswap.adapters.store import FileSystemStore
from loraswap.adapters.validation import BaseModelFingerprint, ValidationLimits
from loraswap.jobs.retrain_runs import RunRecord, RunTrigger
from loraswap.training.retrain import register_candidate
from tests.adapters.conftest import PackageBuilder
from tests.utils.clock import FakeClock


def registry(tmp_path: Path, base: BaseModelFingerprint) -> AdapterRegistry:
    return AdapterRegistry(FileSystemStore(tmp_path / "store"), base, ValidationLimits(),
                           tmp_path / "cache", refresh_seconds=0.0, clock=FakeClock())


def run_from(version: int) -> RunRecord:
    return RunRecord(id="20261130100000-abcdef", tenant="acme", adapter="chat",
                     trigger=RunTrigger(kind="manual"), base_version=version)


def test_a_run_finishing_after_a_rollback_does_not_undo_it(
        tmp_path: Path, base_fingerprint: BaseModelFingerprint,
        build_package: PackageBuilder) -> None:
    reg = registry(tmp_path, base_fingerprint)
    reg.register("acme", "chat", build_package("a", seed=1))
    reg.register("acme", "chat", build_package("b", seed=2), activate=True)
    run = run_from(2)  # the run starts from version 2 …
    reg.rollback("acme", "chat")  # … the operator rolls back to 1 meanwhile
    version, promoted, note = register_candidate(reg, run, build_package("c", seed=3), True)
    # Old code: register(activate=True) made the candidate active over the rollback.
    assert (version, promoted) == (3, False) and "no longer is" in note
    assert reg.active("acme", "chat").version == 1
    # Without an operator in between, the candidate is promoted.
    version, promoted, _ = register_candidate(reg, run_from(1), build_package("d", seed=4),
                                              True)
    assert promoted and reg.active("acme", "chat").version == version == 4


def test_a_run_finishing_after_the_adapter_was_deleted_does_not_revive_it(
        tmp_path: Path, base_fingerprint: BaseModelFingerprint,
        build_package: PackageBuilder) -> None:
    reg = registry(tmp_path, base_fingerprint)
    reg.register("acme", "chat", build_package("a", seed=1))
    reg.delete_adapter("acme", "chat")
    version, promoted, note = register_candidate(reg, run_from(1), build_package("b", seed=2),
                                                 True)
    assert (version, promoted) == (None, False) and "deleted" in note
    assert reg.list("acme") == []  # old code: the adapter came back with the candidate
    assert not reg.promote_if_active("acme", "chat", 1, 1)
    assert reg.list("acme") == []
