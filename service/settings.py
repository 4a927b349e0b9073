"""Service configuration: the only place ``LORASWAP_*`` environment variables are read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from loraswap.base_model.loading import DEFAULT_BASE_MODEL_DIR, Quantization
from loraswap.core.errors import ConfigurationError

DEFAULT_STATE_DIR = Path.home() / ".cache" / "loraswap"
# Admin tokens that are clearly examples, not secrets.
_PLACEHOLDER_TOKENS = frozenset({
    "admin", "changeme", "change-me", "change_me", "password", "secret", "token",
    "placeholder", "example", "test", "dev", "xxx", "todo",
})
MIN_ADMIN_TOKEN_LENGTH = 16


class Settings(BaseSettings):
    """Every tunable of the service. Built once at an entry point and passed down."""

    model_config = SettingsConfigDict(env_prefix="LORASWAP_", extra="ignore")

    base_model: Path = Field(
        default=DEFAULT_BASE_MODEL_DIR,
        description="Folder of the base model (safetensors + tokenizer).",
    )
    quantization: Quantization | None = Field(
        default=None,
        description="nf4 | int8 | bf16 | fp32; unset: nf4 on CUDA; on a CPU bf16 where it is "
        "native (AVX512-BF16 or AMX), else fp32.",
    )
    device: str | None = Field(default=None, description="cpu | cuda[:N]; unset: cuda if present.")
    adapter_dir: Path | None = Field(
        default=None,
        description="Development adapter folder: one PEFT LoRA adapter per sub-folder "
        "(read-only, open to every caller).",
    )
    store_uri: str = Field(
        default=(DEFAULT_STATE_DIR / "store").as_uri(),
        description="Adapter registry store: file:///abs/path or s3://bucket/prefix "
        "(S3 endpoint and credentials from the standard AWS_* variables).",
    )
    adapter_cache_dir: Path = Field(
        default=DEFAULT_STATE_DIR / "adapter-cache",
        description="Local copies of registry adapter versions (verified by sha256).",
    )
    run_log_dir: Path = Field(
        default=DEFAULT_STATE_DIR / "run-logs",
        description="Where the local launcher writes each retraining run's and profiling "
        "job's log (a private folder of the user running the service).",
    )
    registry_refresh_seconds: float = Field(
        default=2.0, gt=0, le=300,
        description="How stale a replica's view of the registry may get (active versions, "
        "tenants); misses are looked up at once.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of the /admin API; required unless dev_mode.",
    )
    dev_mode: bool = Field(
        default=False,
        description="Development only: allow an empty admin token (the /admin API is then "
        "open).",
    )
    # NoDecode: the env value is a comma-separated list of folders, not a JSON list.
    import_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Folders that file:// imports may read (comma-separated absolute paths); "
        "empty: file:// imports are refused.",
    )
    fault_pause_before_publish: str | None = Field(
        default=None,
        description="Test only (crash-safety tests): a write of a key ending with this (or "
        "matching it, when it has a *) pauses forever just before it is published (folder "
        "store: temporary file written; S3: request sent but for its body's last byte).",
    )
    max_upload_bytes: int = Field(
        default=1 << 30, ge=1024, description="Largest adapter upload (all files together)."
    )
    max_loras: int = Field(default=16, ge=1, le=1024, description="Adapter slots in the engine.")
    max_lora_rank: int = Field(default=16, ge=1, le=1024, description="Largest servable rank.")
    max_cpu_loras: int = Field(
        default=64, ge=1, description="Adapters kept decoded in host memory (LRU)."
    )
    max_batch_size: int = Field(default=32, ge=1, le=1024, description="Sequences per step.")
    max_model_len: int = Field(
        default=2048, ge=16, description="Longest sequence (prompt + output) in tokens."
    )
    max_input_tokens: int = Field(
        default=1536, ge=1, description="Longest prompt accepted; longer is 413."
    )
    max_new_tokens_limit: int = Field(
        default=1024, ge=1, description="Largest max_new_tokens a request may ask for."
    )
    max_prefill_tokens: int = Field(
        default=2048, ge=16, description="Prompt tokens prefilled in one step; a longer "
        "prompt is prefilled in chunks, each step also decoding the running sequences."
    )
    prefill_tokens_per_decode: float | None = Field(
        default=None, gt=0, description="While sequences decode, prompt tokens a step "
        "prefills per decoding sequence (at least one KV block), so a long prompt does not "
        "stall running streams; unset: 1.0 on a CPU, no cap on a GPU.")
    kv_cache_bytes: int | None = Field(
        default=None, ge=1, description="KV cache pool in bytes (blocks of 16 tokens, taken "
        "as sequences grow); unset: 85% of the GPU memory left after the weights, or on a "
        "CPU max_batch_size x max_model_len tokens. Must hold one max_model_len sequence.")
    prefix_cache: bool = Field(
        default=True, description="Reuse the KV blocks of a prompt prefix seen before with "
        "the same tenant, adapter and version.")
    max_queue: int = Field(default=256, ge=1, description="Waiting requests before 429.")
    max_queue_per_tenant: int = Field(
        default=64, ge=1,
        description="Requests one tenant may have waiting or being tokenized before its own 429.")
    max_inputs_per_request: int = Field(
        default=64, ge=1, description="Inputs (prompts, texts) one request may carry.")
    max_request_bytes: int = Field(
        default=4 << 20, ge=1024, description="Largest JSON request body; larger is 413.")
    threads: int | None = Field(default=None, ge=1, description="torch intra-op threads.")
    host: str = Field(default="127.0.0.1", description="Bind address of `loraswap serve`.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port of `loraswap serve`.")
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Serve /metrics (and the probes) on this port of the same host instead "
        "of the API port, so tenants never see other tenants' adapter names.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token that may only read /metrics on the API port (Prometheus' "
        "credential; the admin token works too). Outside dev mode /metrics on the API port "
        "needs one of them; the separate LORASWAP_METRICS_PORT listener needs none.",
    )
    drain_seconds: float = Field(
        default=30.0, ge=0, le=3600,
        description="On SIGTERM: longest wait for in-flight requests before exiting "
        "(new requests get 503 meanwhile).",
    )
    log_format: Literal["json", "text"] = Field(default="text", description="Log line format.")
    log_level: str = Field(default="INFO", description="Python logging level.")
    # NoDecode: the env value is a comma-separated string, not pydantic-settings' JSON list.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="API keys (comma-separated); empty: the API is open to anyone.",
    )

    # Drift monitoring, capture and retraining (docs/drift.md).
    drift_enabled: bool = Field(
        default=True, description="Score live traffic against each adapter's training "
        "profile and export loraswap_drift_* gauges; capture and feedback need it too. "
        "On by default (its cost is under the 3 % noise floor, docs/drift.md); capture of "
        "raw inputs stays off until a tenant's policy asks for it.")
    drift_window_size: int = Field(
        default=500, ge=10, le=100_000, description="Inputs in each adapter version's "
        "sliding window.")
    drift_min_samples: int = Field(
        default=100, ge=2, description="Inputs a window needs before its scores are "
        "exported.")
    drift_score_interval_seconds: float = Field(
        default=5.0, gt=0, le=3600, description="How often changed windows are rescored.")
    drift_max_versions: int = Field(
        default=256, ge=1, le=100_000, description="Adapter versions tracked per replica "
        "(bounds the gauge series).")
    drift_min_feedback: int = Field(
        default=20, ge=1, description="Labelled feedback records before "
        "loraswap_live_accuracy is exported.")
    drift_capture_flush_seconds: float = Field(
        default=5.0, gt=0, le=3600, description="Longest time a captured prediction or "
        "feedback record waits before its Parquet batch is written.")
    capture_retention_days: float = Field(
        default=30.0, gt=0, le=36_500, description="Captured predictions, their index and "
        "feedback older than this many days are deleted by the sweeper (training-data "
        "copies stay until their adapter is deleted).")
    capture_sweep_seconds: float = Field(
        default=3600.0, ge=1, le=86_400, description="How often each replica sweeps the "
        "store for captured data past retention and data of deleted tenants.")
    drift_reference_refresh_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="How often a tracked version without a "
        "profile re-reads its reference, so a profile computed from an uploaded reference "
        "file is used within this time.")
    retrain_launcher: Literal["local", "kubernetes"] = Field(
        default="local", description="Where retraining runs: a low-priority local process "
        "or a Kubernetes Job.")
    retrain_job_template: Path = Field(
        default=Path("/etc/loraswap/retrain/job.yaml"),
        description="Job template of the kubernetes launcher.")
    retrain_cooldown_seconds: float = Field(
        default=3600.0, ge=0, description="Least time between two alert-started runs of "
        "one adapter.")
    retrain_webhook_token: SecretStr | None = Field(
        default=None, description="Bearer token that may only post alerts to POST "
        "/admin/retrain (Alertmanager's credential; the admin token is accepted there too).")
    retrain_max_concurrent_runs: int = Field(
        default=2, ge=1, description="Retraining runs at once, all tenants together.")
    retrain_max_concurrent_runs_per_tenant: int = Field(
        default=1, ge=1, description="Retraining runs at once of one tenant's adapters.")
    retrain_max_runs_per_tenant_per_day: int = Field(
        default=4, ge=1, description="Alert-started runs of one tenant per UTC day.")
    retrain_timeout_seconds: float = Field(
        default=21_600.0, gt=0, description="A local retraining or profiling process is "
        "killed after this long (the kubernetes launcher's Jobs have their template's "
        "activeDeadlineSeconds).")
    retrain_stale_seconds: float = Field(
        default=900.0, ge=60, description="A run whose process sent no heartbeat for this "
        "long is expired (failed) and frees its adapter.")
    retrain_feedback_holdout: float = Field(
        default=0.3, ge=0, lt=1, description="Share of labelled feedback held out to "
        "evaluate the candidate and the active version.")
    retrain_min_gain: float = Field(
        default=0.01, ge=0, le=1, description="How much better than the active version "
        "a candidate must be on held-out feedback of the new traffic to be promoted "
        "(gate metric units: accuracy / F1 as a fraction, eval loss in nats); ties keep.")
    retrain_warm_start: bool = Field(
        default=True, description="A candidate starts from the active version's LoRA and "
        "head weights (false: a fresh LoRA).")
    retrain_replay_ratio: float = Field(
        default=1.0, ge=0, le=100, description="Original training rows replayed per "
        "feedback training row in a candidate's data.")
    retrain_feedback_repeat: int = Field(
        default=2, ge=1, le=20, description="How many times each feedback training row "
        "appears in a candidate's data.")

    def check_secure(self) -> None:
        """Refuse to run with an empty or placeholder admin token outside dev mode."""
        if self.dev_mode:
            return
        token = self.admin_token.get_secret_value() if self.admin_token else ""
        if not token:
            raise ConfigurationError(
                "LORASWAP_ADMIN_TOKEN is not set: set a random secret of at least "
                f"{MIN_ADMIN_TOKEN_LENGTH} characters (e.g. `openssl rand -hex 32`), or set "
                "LORASWAP_DEV_MODE=true for local development (the /admin API is then open)"
            )
        _check_token("LORASWAP_ADMIN_TOKEN", token)
        if self.metrics_token is not None:
            scrape = self.metrics_token.get_secret_value()
            _check_token("LORASWAP_METRICS_TOKEN", scrape)
            if scrape == token:
                raise ConfigurationError("LORASWAP_METRICS_TOKEN must differ from "
                                         "LORASWAP_ADMIN_TOKEN (it may only read /metrics)")
        if self.retrain_webhook_token is not None:
            webhook = self.retrain_webhook_token.get_secret_value()
            _check_token("LORASWAP_RETRAIN_WEBHOOK_TOKEN", webhook)
            if webhook == token:
                raise ConfigurationError("LORASWAP_RETRAIN_WEBHOOK_TOKEN must differ from "
                                         "LORASWAP_ADMIN_TOKEN (it may only post alerts)")

    @property
    def auth_required(self) -> bool:
        """Whether every inference request must carry a key (production mode)."""
        return bool(self.api_keys) or self.admin_token is not None

    @field_validator("import_roots", mode="before")
    @classmethod
    def _split_import_roots(cls, value: Any) -> Any:
        """Accept ``"/a,/b"`` as well as a list."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("import_roots")
    @classmethod
    def _absolute_import_roots(cls, value: list[Path]) -> list[Path]:
        for root in value:
            if not root.is_absolute():
                raise ValueError(f"import root {str(root)!r} must be an absolute path")
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_api_keys(cls, value: Any) -> Any:
        """Accept ``"k1,k2"`` (and a JSON list) as well as a Python list."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [key.strip() for key in text.split(",") if key.strip()]


def _check_token(setting: str, token: str) -> None:
    """Refuse a placeholder or short secret."""
    lowered = token.strip().lower()
    if (len(token) < MIN_ADMIN_TOKEN_LENGTH or lowered in _PLACEHOLDER_TOKENS
            or "changeme" in lowered or "change-me" in lowered or lowered.startswith("<")):
        raise ConfigurationError(
            f"{setting} looks like a placeholder or is shorter than "
            f"{MIN_ADMIN_TOKEN_LENGTH} characters: use a random secret"
        )
