"""Shared builders of drift tests: profiles, records and a monitor on a private registry."""

from __future__ import annotations

from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from loraswap.adapters.store import ObjectStore
from loraswap.core.identity import AdapterVersionRef
from loraswap.service.drift.metrics import DriftMetrics
from loraswap.service.drift.monitor import DriftConfig, DriftMonitor
from loraswap.service.drift.records import PredictionRecord
from loraswap.service.drift.reference import parse_profile
from loraswap.tenants.directory import TenantDirectory

REF = AdapterVersionRef.parse("acme/sentiment@1")
DIM = 16


def profile(seed: int = 0) -> dict[str, Any]:
    """A profile.json like training/profile.py writes: lengths ~ 10±3 tokens, two labels
    at 50/50, confidences high, embeddings from N(0, I) projected on 4 axes."""
    rng = np.random.default_rng(seed)
    lengths = rng.normal(10, 3, 2000).clip(1)
    conf = rng.uniform(0.6, 1.0, 2000)
    vectors = rng.normal(0, 1, (512, DIM))
    mean = vectors.mean(0)
    basis = np.eye(DIM)[:4]
    return {
        "profile_version": 1, "task": "seq-cls",
        "input_length_tokens": histogram(lengths, 20, 0.0, float(lengths.max())),
        "confidence": histogram(conf, 20, 0.0, 1.0),
        "label_distribution": {"counts": {"neg": 1000, "pos": 1000},
                               "shares": {"neg": 0.5, "pos": 0.5}},
        "embedding_served": {
            "dim": DIM, "mean": mean.tolist(), "std": vectors.std(0).tolist(),
            "pca": {"components": basis.tolist(),
                    "reference_projections": ((vectors[:64] - mean) @ basis.T).tolist()},
        },
    }


def histogram(values: np.ndarray, bins: int, low: float, high: float) -> dict[str, Any]:
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    return {"count": len(values), "histogram": {"edges": edges.tolist(),
                                                 "counts": counts.tolist()}}


def records(n: int, *, shift: float = 0.0, seed: int = 1, ref: AdapterVersionRef = REF,
            ) -> list[PredictionRecord]:
    """``n`` records like the profile's data; ``shift`` moves lengths, labels and vectors."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = "pos" if rng.random() < 0.5 + min(shift, 1) * 0.45 else "neg"
        out.append(PredictionRecord(
            prediction_id=f"pred-{seed}x{i}", index=0, ref=ref, task="seq-cls",
            input_text=f"text {i}", input_tokens=int(max(1, rng.normal(10 + 15 * shift, 3))),
            output={"label": label}, predicted_label=label,
            confidence=float(rng.uniform(0.6 - 0.5 * min(shift, 1), 1.0)),
            embedding=rng.normal(shift * 1.5, 1, DIM)))
    return out


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def monitor(active: dict[tuple[str, str], str] | None = None, *, min_samples: int = 50,
            window: int = 200, document: dict[str, Any] | None = None,
            ) -> tuple[DriftMonitor, CollectorRegistry, FakeClock]:
    """A monitor (not started: tests call process/score_all) on its own registry, with
    ``document`` (default :func:`profile`) as every version's profile.json."""
    registry = CollectorRegistry()
    clock = FakeClock()
    versions = active if active is not None else {("acme", "sentiment"): "1"}
    mon = DriftMonitor(
        DriftConfig(window_size=window, min_samples=min_samples, score_interval=1,
                    retire_interval=1),
        DriftMetrics(registry), lambda ref: parse_profile(document or profile()),
        lambda tenant, adapter: versions.get((tenant, adapter)), clock=clock)
    return mon, registry, clock


def score(registry: CollectorRegistry, signal: str, method: str,
          ref: AdapterVersionRef = REF) -> float | None:
    """The exported gauge value, None when the series is absent."""
    return registry.get_sample_value("loraswap_drift_score", {
        **dict(zip(("tenant", "adapter", "version"), ref.labels, strict=True)),
        "signal": signal, "method": method})


# --- causal-lm and token-cls profiles and records -------------------------------------

GREEDY_LENGTH, SAMPLED_LENGTH = (24.0, 5.0), (40.0, 10.0)  # mean, std of output tokens
GREEDY_LOGPROB, SAMPLED_LOGPROB = (-0.4, 0.1), (-1.5, 0.3)  # mean, std of mean log-prob
CAP = 64


def generation_profile(n: int = 500, seed: int = 0,
                       decodings: tuple[str, ...] = ("greedy", "sampled")) -> dict[str, Any]:
    """A causal-lm profile.json like training/profile.py writes: prompt lengths, and per
    decoding ``n`` reference generations (lengths capped at 64, logprobs on shared bins)."""
    rng = np.random.default_rng(seed)
    specs = {"greedy": (GREEDY_LENGTH, GREEDY_LOGPROB),
             "sampled": (SAMPLED_LENGTH, SAMPLED_LOGPROB)}
    drawn = {d: (rng.normal(*specs[d][0], n).round().clip(1, CAP),
                 rng.normal(*specs[d][1], n).clip(max=0)) for d in decodings}
    low = min(float(v[1].min()) for v in drawn.values())
    high = max(float(v[1].max()) for v in drawn.values())
    lengths = rng.normal(10, 3, 2000).clip(1)
    return {
        "profile_version": 2, "task": "causal-lm",
        "input_length_tokens": histogram(lengths, 20, 0.0, float(lengths.max())),
        "generation": {"prompts": n, "max_new_tokens": CAP, "decodings": {
            d: {"output_length_tokens": histogram(out, 20, 0.5, CAP + 0.5),
                "token_logprob": histogram(logp, 20, low, high)}
            for d, (out, logp) in drawn.items()}},
    }


def generations(n: int, decoding: str, *, shift: float = 0.0, seed: int = 1,
                       max_new_tokens: int = CAP, ref: AdapterVersionRef = REF,
                       ) -> list[PredictionRecord]:
    """``n`` generations decoded like ``decoding`` (``greedy``: temperature 0; ``sampled``:
    temperature 1; ``other``: 0.7); ``shift`` makes them longer and less probable."""
    from loraswap.service.drift.records import GenerationSignals, decoding_of
    from loraswap.service.engine.sampling import SamplingParams

    rng = np.random.default_rng(seed)
    spec = {"greedy": (GREEDY_LENGTH, GREEDY_LOGPROB, 0.0), "other": (
        GREEDY_LENGTH, GREEDY_LOGPROB, 0.7), "sampled": (SAMPLED_LENGTH, SAMPLED_LOGPROB, 1.0)}
    (length_mean, length_std), (logp_mean, logp_std), temperature = spec[decoding]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    out = []
    for i in range(n):
        length = int(np.clip(round(rng.normal(length_mean + 20 * shift, length_std)), 1,
                             max_new_tokens))
        mean = min(0.0, rng.normal(logp_mean - shift, logp_std))
        logprobs = tuple(float(v) for v in np.full(length, mean))
        out.append(PredictionRecord(
            prediction_id=f"cmpl-{seed}x{i}", index=0, ref=ref, task="causal-lm",
            input_text=f"prompt {i}", input_tokens=int(max(1, rng.normal(10, 3))),
            output={"text": "…"}, output_tokens=length, mean_logprob=mean,
            generation=GenerationSignals(logprobs, decoding_of(params), max_new_tokens)))
    return out


TAGS = ("O", "B-Disease", "I-Disease")


def token_profile() -> dict[str, Any]:
    """A token-cls profile: word tags 80/10/10 predicted on the reference sample."""
    document = profile()
    document["task"] = "token-cls"
    shares = {"O": 0.8, "B-Disease": 0.1, "I-Disease": 0.1}
    document["label_distribution"] = {"shares": {"O": 0.5, "B-Disease": 0.25,
                                                 "I-Disease": 0.25}}
    document["predicted_label_distribution"] = {"unit": "word", "shares": shares}
    return document


def token_records(n: int, *, shift: float = 0.0, seed: int = 1) -> list[PredictionRecord]:
    """Inputs of 10 words tagged like the profile's predictions (``shift``: more entities,
    lower confidence)."""
    from loraswap.service.drift.records import WordPredictions

    rng = np.random.default_rng(seed)
    entity = 0.2 + 0.6 * min(shift, 1)
    out = []
    for i in range(n):
        tags = tuple("O" if rng.random() > entity else rng.choice(TAGS[1:]) for _ in range(10))
        words = WordPredictions(tags, float(rng.uniform(0.6 - 0.5 * min(shift, 1), 1.0)))
        out.append(PredictionRecord(
            prediction_id=f"pred-{seed}x{i}", index=0, ref=REF, task="token-cls",
            input_text=f"text {i}", input_tokens=int(max(1, rng.normal(10, 3))),
            output={"entities": []}, confidence=words.confidence, word_tags=words.tags,
            embedding=rng.normal(shift * 1.5, 1, DIM)))
    return out


def psi_against(mixture: Any, values: list[float]) -> float:
    """PSI of ``values`` against a generation reference with its decodings mixed equally
    (what comparing them with that reference, whatever their decoding, would score)."""
    from loraswap.service.drift.scores import bin_counts, psi

    return psi(mixture.expected({d: 1 for d in mixture.counts}),
               bin_counts(values, mixture.edges))


def owner(store: ObjectStore, tenant: str) -> str:
    """The data owner of ``tenant`` (``{name}.{id}``): where its captures, capture index
    and feedback are in the store."""
    return TenantDirectory(store).get(tenant).data_owner
