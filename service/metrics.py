"""Prometheus metrics of one service instance (own registry: no module-level state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from loraswap.service.engine.observer import StepKind, Tier

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2)
STORE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
STEP_TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
LOAD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class ServiceMetrics:
    """HTTP, token, scheduler and adapter-residency metrics; also the engine's observer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("loraswap_requests", "HTTP requests answered.",
                                ["route", "status", "adapter"], registry=r)
        self.request_seconds = Histogram(
            "loraswap_request_duration_seconds", "HTTP request latency.",
            ["route", "status", "adapter"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("loraswap_prompt_tokens", "Prompt tokens processed.",
                                     ["adapter"], registry=r)
        self.generated_tokens = Counter("loraswap_generated_tokens", "Output tokens generated.",
                                        ["adapter"], registry=r)
        self.finished = Counter("loraswap_generations_finished", "Generations ended, by reason.",
                                ["adapter", "reason"], registry=r)
        self.ttft = Histogram("loraswap_time_to_first_token_seconds",
                              "Arrival to first output token.", ["adapter"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("loraswap_time_per_output_token_seconds",
                              "Time between output tokens of one request.", ["adapter"],
                              buckets=TOKEN_BUCKETS, registry=r)
        self.queue_depth = Gauge("loraswap_queue_depth", "Requests waiting for admission.",
                                 registry=r)
        self.batch_size = Gauge("loraswap_running_batch_size", "Sequences in the running batch.",
                                registry=r)
        self.step_seconds = Histogram(
            "loraswap_engine_step_seconds",
            "Time of one engine forward pass, by kind (prefill, decode, encode).", ["kind"],
            buckets=STEP_BUCKETS, registry=r)
        self.step_tokens = Histogram(
            "loraswap_engine_step_tokens",
            "Real tokens in one engine forward pass (decode: running sequences), by kind.",
            ["kind"], buckets=STEP_TOKEN_BUCKETS, registry=r)
        self.kv_blocks_total = Gauge("loraswap_kv_blocks_total", "Blocks in the KV pool.",
                                     registry=r)
        self.kv_blocks_used = Gauge("loraswap_kv_blocks_used",
                                    "KV pool blocks held by running sequences.", registry=r)
        self.kv_blocks_cached = Gauge(
            "loraswap_kv_blocks_cached",
            "KV pool blocks holding cached prompt prefixes that no sequence uses "
            "(evicted when room is needed).", registry=r)
        self.preemptions = Counter(
            "loraswap_preemptions", "Running sequences whose KV blocks were taken back "
            "(recomputed later), by adapter.", ["adapter"], registry=r)
        self.prefix_blocks = Counter(
            "loraswap_prefix_cache_blocks",
            "Full prompt blocks looked up in the prefix cache, by result (hit, miss); the hit "
            "rate is hit / (hit + miss).", ["result"], registry=r)
        self.resident = Gauge("loraswap_resident_adapters", "Adapters resident, by tier.",
                              ["tier"], registry=r)
        self.loads = Counter("loraswap_adapter_loads", "Adapter loads into a tier.",
                             ["tier", "adapter"], registry=r)
        self.load_seconds = Histogram("loraswap_adapter_load_seconds",
                                      "Adapter load latency into a tier.", ["tier"],
                                      buckets=LOAD_BUCKETS, registry=r)
        self.evictions = Counter("loraswap_adapter_evictions", "Adapters evicted from a tier.",
                                 ["tier", "adapter"], registry=r)
        self.lookups = Counter("loraswap_adapter_lookups", "Adapter lookups by tier and result.",
                               ["tier", "result"], registry=r)
        self.registered = Gauge("loraswap_registered_adapters",
                                "Adapters in the registry, per tenant.", ["tenant"], registry=r)
        self.registrations = Counter("loraswap_adapter_registrations",
                                     "Adapter versions registered through this replica.",
                                     ["tenant"], registry=r)
        self.rejections = Counter("loraswap_adapter_rejections",
                                  "Adapter uploads refused, by reason.", ["reason"], registry=r)
        self.promotions = Counter("loraswap_adapter_promotions",
                                  "Active-version switches, by kind (promote/rollback).",
                                  ["tenant", "kind"], registry=r)
        self.store_seconds = Histogram("loraswap_store_operation_seconds",
                                       "Adapter store operation latency.", ["operation"],
                                       buckets=STORE_BUCKETS, registry=r)
        self.store_errors = Counter("loraswap_store_errors", "Adapter store operations failed.",
                                    ["operation"], registry=r)

    def render(self) -> bytes:
        """Prometheus text exposition of every metric."""
        text: bytes = generate_latest(self.registry)
        return text

    def observe_request(self, route: str, status: int, adapter: str, seconds: float) -> None:
        """Count one HTTP request and its latency."""
        labels = (route, str(status), adapter)
        self.requests.labels(*labels).inc()
        self.request_seconds.labels(*labels).observe(seconds)

    # registry ------------------------------------------------------------------------------

    def observe_store(self, operation: str, seconds: float, ok: bool) -> None:
        """StoreObserver: one store operation's latency, and its failure."""
        self.store_seconds.labels(operation).observe(seconds)
        if not ok:
            self.store_errors.labels(operation).inc()

    def adapter_registered(self, tenant: str) -> None:
        """Count a version registered through this replica."""
        self.registrations.labels(tenant).inc()

    def adapter_rejected(self, reason: str) -> None:
        """Count a refused upload by its error code."""
        self.rejections.labels(reason).inc()

    def adapter_promoted(self, tenant: str, kind: str) -> None:
        """Count a promote or rollback."""
        self.promotions.labels(tenant, kind).inc()

    def registered_adapters(self, counts: dict[str, int]) -> None:
        """Set the registered-adapter gauge per tenant (tenants now at zero included)."""
        for labels in list(self.registered._metrics):  # drop tenants that disappeared
            if labels[0] not in counts:
                self.registered.remove(*labels)
        for tenant, count in counts.items():
            self.registered.labels(tenant).set(count)

    # EngineObserver ----------------------------------------------------------------------

    def adapter_lookup(self, tier: Tier, *, hit: bool) -> None:
        """Count a lookup in a residency tier."""
        self.lookups.labels(tier, "hit" if hit else "miss").inc()

    def adapter_loaded(self, adapter: str, tier: Tier, seconds: float) -> None:
        """Count a load and its latency."""
        self.loads.labels(tier, adapter).inc()
        self.load_seconds.labels(tier).observe(seconds)

    def adapter_evicted(self, adapter: str, tier: Tier) -> None:
        """Count an eviction."""
        self.evictions.labels(tier, adapter).inc()

    def resident_adapters(self, tier: Tier, count: int) -> None:
        """Set the number of resident adapters in a tier."""
        self.resident.labels(tier).set(count)

    def scheduler_state(self, *, waiting: int, running: int) -> None:
        """Set queue depth and running batch size."""
        self.queue_depth.set(waiting)
        self.batch_size.set(running)

    def kv_blocks(self, *, used: int, total: int, cached: int) -> None:
        """Set the KV pool's block gauges."""
        self.kv_blocks_used.set(used)
        self.kv_blocks_total.set(total)
        self.kv_blocks_cached.set(cached)

    def preempted(self, adapter: str) -> None:
        """Count a preemption."""
        self.preemptions.labels(adapter).inc()

    def prefix_lookup(self, *, queried: int, hit: int) -> None:
        """Count prefix-cache block hits and misses."""
        if queried:
            self.prefix_blocks.labels("hit").inc(hit)
            self.prefix_blocks.labels("miss").inc(queried - hit)

    def engine_step(self, kind: StepKind, seconds: float, tokens: int) -> None:
        """Observe one forward pass: its time and its tokens."""
        self.step_seconds.labels(kind).observe(seconds)
        self.step_tokens.labels(kind).observe(tokens)

    def first_token(self, adapter: str, seconds: float) -> None:
        """Observe a time to first token."""
        self.ttft.labels(adapter).observe(seconds)

    def output_token(self, adapter: str, seconds: float) -> None:
        """Observe one inter-token latency."""
        self.tpot.labels(adapter).observe(seconds)

    def request_finished(self, adapter: str, reason: str, tokens: int) -> None:
        """Count a finished generation and its tokens."""
        self.finished.labels(adapter, reason).inc()
        self.generated_tokens.labels(adapter).inc(tokens)
