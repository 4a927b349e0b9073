"""Leaks (issue 13): 1,000 adapter load/evict cycles through the slot table (each one read
from disk, so a leaked file handle or tensor would pile up) and 500 register/delete cycles
through the registry. After warm-up: no adapter's tensors outlive its eviction (weak
references), RSS grows by less than half of what keeping every loaded adapter would cost
(not a share of the whole process, which hid such a leak; the registry cycles, whose leak
would be below RSS noise, keep the 5% bound), the open file handles come back to their
baseline, and the registry's cache folder does not grow.

Marked ``integration`` and ``slow`` (about a minute on the shared 2-core machine):
``python -m pytest -q -m integration tests/service/test_leaks.py``."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import weakref
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import torch
from transformers import LlamaForCausalLM

from loraswap.adapters.demo import write_random_adapter
from loraswap.adapters.lora_format import read_lora_adapter
from loraswap.adapters.registry import AdapterRegistry
from loraswap.adapters.store import FileSystemStore
from loraswap.adapters.validation import ValidationLimits
from loraswap.base_model.fingerprint import BaseModelFingerprint
from loraswap.core.errors import AdapterNotFoundError
from loraswap.core.identity import AdapterVersionRef
from loraswap.service.engine.lora_slots import LoraSlotTable
from loraswap.service.engine.observer import NullObserver
from loraswap.service.engine.residency import LoraSlotManager
from loraswap.service.engine.runner import model_shape, projection_groups
from loraswap.tenants.directory import TenantDirectory
from tests.service.conftest import PackageFactory

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# RSS may grow by at most this share of what the leak under test would keep.
MAX_SHARE_OF_LEAK = 0.5
# Where a cycle's leak would be below RSS noise (a 9 KB package registered 500 times
# grows RSS by 3.7 MiB with no leak): a share of the process, a bound on gross leaks only.
MAX_PROCESS_GROWTH = 0.05


def _settled_rss() -> int:
    """RSS after a full collection and returning freed heap to the kernel."""
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return int(psutil.Process().memory_info().rss)


def _check_no_growth(cycle: Callable[[int], None], *, warmup: int, cycles: int,
                     leak_bytes_per_cycle: int | None) -> dict[str, float]:
    """Run ``cycle`` ``warmup`` times, take the baseline, run it ``cycles`` times more;
    ``leak_bytes_per_cycle``: what one cycle would keep if it leaked what it loaded (None:
    only :data:`MAX_PROCESS_GROWTH` of the process, for cycles whose leak would be smaller
    than RSS noise)."""
    process = psutil.Process()
    for index in range(warmup):
        cycle(index)
    rss_before, fds_before = _settled_rss(), process.num_fds()
    for index in range(warmup, warmup + cycles):
        cycle(index)
    rss_after, fds_after = _settled_rss(), process.num_fds()
    allowed = (MAX_SHARE_OF_LEAK * leak_bytes_per_cycle * cycles
               if leak_bytes_per_cycle is not None else MAX_PROCESS_GROWTH * rss_before)
    figures = {"rss_before_mib": rss_before / 2**20, "rss_after_mib": rss_after / 2**20,
               "growth_mib": (rss_after - rss_before) / 2**20, "allowed_mib": allowed / 2**20,
               "fds_before": fds_before, "fds_after": fds_after}
    print(f"leak figures: {figures}")
    assert fds_after <= fds_before, f"file handles leaked: {figures}"
    assert rss_after - rss_before < allowed, f"RSS grew: {figures}"
    return figures


def test_1000_adapter_load_evict_cycles_through_the_slot_table(
        tiny_base_dir: Path, tmp_path: Path) -> None:
    model = LlamaForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32)
    shape = model_shape(model)
    table = LoraSlotTable(num_layers=shape.num_layers, groups=projection_groups(shape),
                          max_loras=2, max_rank=8, dtype=torch.float32,
                          device=torch.device("cpu"))
    slots = LoraSlotManager(table, NullObserver())
    folders = []
    for index in range(6):  # more adapters than slots: every acquire evicts one
        folder = tmp_path / f"a{index}"
        write_random_adapter(tiny_base_dir, folder, rank=4, seed=index,
                             targets=("q_proj", "v_proj", "down_proj"))
        folders.append(folder)

    loaded: list[weakref.ref[torch.Tensor]] = []

    def cycle(index: int) -> None:
        folder = folders[index % len(folders)]
        weights = read_lora_adapter(folder)
        loaded.extend(weakref.ref(t) for pair in weights.factors.values() for t in pair)
        slot = slots.acquire(AdapterVersionRef.parse(f"{folder.name}@1"), weights)
        assert slot is not None
        slots.release(slot)

    one = read_lora_adapter(folders[0])
    adapter_bytes = sum(t.nbytes for pair in one.factors.values() for t in pair)
    _check_no_growth(cycle, warmup=100, cycles=1000, leak_bytes_per_cycle=adapter_bytes)
    gc.collect()
    alive = sum(ref() is not None for ref in loaded)
    assert alive == 0, f"{alive} tensors of evicted adapters are still referenced"


def test_500_register_delete_cycles_through_the_registry(
        tiny_base_dir: Path, tmp_path: Path, make_package: PackageFactory) -> None:
    store = FileSystemStore(tmp_path / "store")
    TenantDirectory(store).create("acme")
    registry = AdapterRegistry(store, BaseModelFingerprint.from_folder(tiny_base_dir),
                               ValidationLimits(), tmp_path / "cache", refresh_seconds=0.0)
    package = make_package("leaky")

    def cycle(index: int) -> None:
        version = registry.register("acme", "chat", package)
        registry.local_folder("acme", "chat", version.version)
        registry.delete_adapter("acme", "chat")
        with pytest.raises(AdapterNotFoundError):
            registry.active("acme", "chat")

    def cached() -> list[Path]:
        return sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file())

    cycle(0)
    cached_after_one = len(cached())
    _check_no_growth(cycle, warmup=50, cycles=500, leak_bytes_per_cycle=None)
    assert len(cached()) <= cached_after_one, "deleted versions stay in the local cache"
