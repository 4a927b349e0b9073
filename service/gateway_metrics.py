"""Gauges of the Gateway API Inference Extension's model-server protocol, under our prefix.

The endpoint picker of an InferencePool scrapes each pod and routes by load and LoRA
affinity. Its protocol (the one vLLM implements) asks for: requests waiting, requests
running, KV-cache usage as a fraction 0-1, and an info gauge whose *value* is a Unix
timestamp and whose labels name the adapters running and waiting (comma-separated, no
spaces) and ``max_lora``. The picker lets operators name the metrics, so ours keep the
``loraswap_`` prefix (see ``k8s/overlays/gateway``). ``loraswap_adapter_resident`` adds
what the protocol lacks: which adapters are resident in which tier.

Everything is read from the engine when Prometheus scrapes, so the gauges are never stale
and the engine thread does no extra work per step.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from loraswap.service.engine.engine import LoraEngine

# The names the gateway overlay's endpoint-picker configuration refers to.
WAITING = "loraswap_num_requests_waiting"
RUNNING = "loraswap_num_requests_running"
KV_CACHE_USAGE = "loraswap_kv_cache_usage_perc"
LORA_INFO = "loraswap_lora_requests_info"
ADAPTER_RESIDENT = "loraswap_adapter_resident"


def _names_label(names: Iterable[str]) -> str:
    """Distinct adapter names joined by commas, no spaces (as the protocol parses them)."""
    return ",".join(sorted(set(names)))


class GatewayCollector:
    """A Prometheus collector (``collect``/``describe``) of the protocol gauges, read from the
    engine that ``engine`` returns (None while loading)."""

    def __init__(self, engine: Callable[[], LoraEngine | None], max_loras: int,
                 clock: Callable[[], float] = time.time) -> None:
        """``max_loras``: the configured slots, reported while the engine is still loading."""
        self._engine = engine
        self._max_loras = max_loras
        self._clock = clock

    def describe(self) -> Iterator[Metric]:
        """The families this collector exports (so the registry can check for clashes)."""
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        """The gauges as of now."""
        waiting, running, usage, info, resident = self._families()
        engine = self._engine()
        if engine is None:  # still loading: nothing runs, nothing is resident
            for gauge in (waiting, running, usage):
                gauge.add_metric([], 0)
            # The picker learns the pod's LoRA capacity from the first scrape on.
            info.add_metric(["", "", str(self._max_loras)], self._clock())
            yield from (waiting, running, usage, info, resident)
            return
        scheduler = engine.scheduler
        num_running = scheduler.num_running
        waiting.add_metric([], scheduler.num_waiting)
        running.add_metric([], num_running)
        # Blocks of the paged KV pool held by running sequences, over all blocks: what tells
        # the picker how much more work this pod takes before it queues or preempts.
        usage.add_metric([], scheduler.kv_usage)
        running_names, waiting_names = scheduler.adapter_names()
        info.add_metric([_names_label(running_names), _names_label(waiting_names),
                         str(engine.config.max_loras)], self._clock())
        view = engine.residency()
        for tier, keys in (("slot", view.in_slots), ("host", view.in_host_memory)):
            for name, count in Counter(str(key.ref) for key in keys).items():
                resident.add_metric([name, tier], count)
        yield from (waiting, running, usage, info, resident)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(WAITING, "Requests queued, not yet running (gateway protocol)."),
            GaugeMetricFamily(RUNNING, "Requests in the running batch (gateway protocol)."),
            GaugeMetricFamily(KV_CACHE_USAGE,
                              "Fraction (0-1) of the KV cache pool's blocks in use."),
            GaugeMetricFamily(LORA_INFO,
                              "Adapters running and waiting (comma-separated); the value is "
                              "the Unix time of this report (gateway protocol).",
                              labels=["running_lora_adapters", "waiting_lora_adapters",
                                      "max_lora"]),
            GaugeMetricFamily(ADAPTER_RESIDENT,
                              "Versions of an adapter resident in a tier (slot or host).",
                              labels=["adapter", "tier"]),
        )
