"""A profiling job computes profile.json for a plain PEFT import from a reference file:
the same predictions as PEFT's own loader, stored beside the version, read back by the
service's parser; a replaced job writes nothing; a bad reference fails with the reason."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoTokenizer, LlamaForSequenceClassification

from loraswap.adapters.package import TaskKind
from loraswap.adapters.registry import AdapterRegistry
from loraswap.adapters.store import ObjectStore, open_store
from loraswap.adapters.validation import ManifestDefaults, ValidationLimits
from loraswap.base_model.fingerprint import BaseModelFingerprint
from loraswap.base_model.loading import Quantization
from loraswap.jobs.profile_jobs import ProfileJob, ProfileJobs, reference_key
from loraswap.service.drift.reference import parse_profile
from loraswap.training.profile_job import ProfileJobSettings, execute_job
from tests.peft_adapters import lora_config, save_peft_adapter

LABELS = ["negative", "positive"]
TEXTS = ["great movie", "awful plot and worse acting", "a charming little film", "boring",
         "I loved every minute", "not worth the ticket", "the quick brown fox",
         "paris is the capital of france"]


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    return open_store((tmp_path / "store").as_uri())


@pytest.fixture
def registered(tiny_base_dir: Path, tmp_path: Path, store: ObjectStore) -> Path:
    """A plain PEFT seq-cls folder (no loraswap.json, no profile.json) as acme/mood@1."""
    folder = save_peft_adapter(tiny_base_dir, tmp_path / "mood", lora_config("SEQ_CLS"),
                               seed=3, num_labels=len(LABELS))
    registry = AdapterRegistry(store, BaseModelFingerprint.from_folder(tiny_base_dir),
                               ValidationLimits(), tmp_path / "cache")
    registry.register("acme", "mood", folder, manifest_defaults=ManifestDefaults(
        task=TaskKind.SEQ_CLS, labels=tuple(LABELS)))
    return folder


def submit(store: ObjectStore, path: Path, **columns: str | None) -> ProfileJob:
    data = path.read_bytes()
    key = reference_key("acme", "mood", 1, path.name, data)
    store.put(key, data)
    return ProfileJobs(store).submit(ProfileJob(
        tenant="acme", adapter="mood", version=1, filename=path.name, reference_key=key,
        text_column=str(columns.get("text_column") or "text"),
        label_column=columns.get("label_column"), max_rows=2000))


def settings(store: ObjectStore, tiny_base_dir: Path, tmp_path: Path) -> ProfileJobSettings:
    return ProfileJobSettings(store_uri=store.uri, base_model=tiny_base_dir,
                              cache_dir=tmp_path / "job-cache", quantization=Quantization.FP32)


def peft_labels(base_dir: Path, folder: Path, texts: list[str]) -> list[str]:
    """What PEFT's own loader predicts for each text (the reference implementation)."""
    model = LlamaForSequenceClassification.from_pretrained(base_dir, num_labels=len(LABELS),
                                                           dtype=torch.float32)
    model = PeftModel.from_pretrained(model, folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    with torch.inference_mode():
        return [LABELS[int(model(input_ids=torch.tensor([tokenizer(t)["input_ids"]]))
                           .logits[0].argmax())] for t in texts]


def test_a_plain_peft_import_is_profiled_from_its_predictions(
        registered: Path, store: ObjectStore, tiny_base_dir: Path, tmp_path: Path) -> None:
    texts = [f"{TEXTS[i % len(TEXTS)]} {i}" for i in range(120)]
    path = tmp_path / "reference.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "stars"])
        writer.writerows([t, 5] for t in texts)
    job = submit(store, path, text_column="review")
    final = execute_job("acme", "mood", 1, job.id, settings(store, tiny_base_dir, tmp_path))

    assert final is not None and final.status == "done", final
    assert final.rows == {"in_file": 120, "used": 120, "dropped_empty": 0}
    assert final.labels_from is not None and "predictions" in final.labels_from
    document = ProfileJobs(store).read_profile("acme", "mood", 1)
    assert document is not None
    expected = peft_labels(tiny_base_dir, registered, texts)
    counts = document["label_distribution"]["counts"]
    assert counts == {label: expected.count(label) for label in LABELS}
    assert 0 < counts["negative"] < 120  # both classes occur: a real comparison
    assert document["input_length_tokens"]["count"] == 120
    assert document["embedding_served"]["dim"] == 64
    reference = parse_profile(document)
    assert reference.input_length is not None and reference.confidence is not None
    assert reference.embedding is not None
    assert reference.labels is not None and set(reference.labels) == set(LABELS)


def test_file_labels_are_the_label_distribution(
        registered: Path, store: ObjectStore, tiny_base_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "reference.jsonl"
    rows = [{"text": TEXTS[i % len(TEXTS)], "label": LABELS[i % 4 == 0]} for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = submit(store, path)
    final = execute_job("acme", "mood", 1, job.id, settings(store, tiny_base_dir, tmp_path))
    assert final is not None and final.status == "done", final
    assert final.labels_from == "the reference file's column 'label'"
    document = ProfileJobs(store).read_profile("acme", "mood", 1)
    assert document is not None
    assert document["label_distribution"]["counts"] == {"negative": 30, "positive": 10}


def test_a_replaced_job_writes_nothing(registered: Path, store: ObjectStore,
                                       tiny_base_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "reference.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    first = submit(store, path)
    jobs = ProfileJobs(store)
    jobs.update(first, lambda job: setattr(job, "status", "failed"))  # ended: replaceable
    second = submit(store, path)
    assert execute_job("acme", "mood", 1, first.id,
                       settings(store, tiny_base_dir, tmp_path)) is None
    current = jobs.get("acme", "mood", 1)
    assert current is not None and current.id == second.id and current.status == "queued"
    assert jobs.read_profile("acme", "mood", 1) is None


def test_a_reference_the_job_cannot_use_fails_with_the_reason(
        registered: Path, store: ObjectStore, tiny_base_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "reference.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": "meh"}) + "\n" for t in TEXTS))
    job = submit(store, path)
    final = execute_job("acme", "mood", 1, job.id, settings(store, tiny_base_dir, tmp_path))
    assert final is not None and final.status == "failed"
    assert final.reason is not None and "['meh']" in final.reason
    assert "not labels of the adapter (negative, positive)" in final.reason
    assert ProfileJobs(store).read_profile("acme", "mood", 1) is None


def register_plain(store: ObjectStore, base_dir: Path, tmp_path: Path, name: str,
                   task_type: str, labels: list[str] | None) -> None:
    folder = save_peft_adapter(base_dir, tmp_path / name, lora_config(task_type), seed=5,
                               num_labels=len(labels) if labels else None)
    registry = AdapterRegistry(store, BaseModelFingerprint.from_folder(base_dir),
                               ValidationLimits(), tmp_path / "cache")
    registry.register("acme", name, folder, manifest_defaults=ManifestDefaults(
        labels=tuple(labels) if labels else None))


def submit_as(store: ObjectStore, name: str, path: Path, text: str,
              label: str | None) -> ProfileJob:
    data = path.read_bytes()
    key = reference_key("acme", name, 1, path.name, data)
    store.put(key, data)
    return ProfileJobs(store).submit(ProfileJob(
        tenant="acme", adapter=name, version=1, filename=path.name, reference_key=key,
        text_column=text, label_column=label, max_rows=2000))


def test_a_causal_lm_reference_measures_prompts_as_the_service_tokenizes_them(
        store: ObjectStore, tiny_base_dir: Path, tmp_path: Path) -> None:
    from loraswap.service.api.prompts import PromptBuilder, PromptLimits

    register_plain(store, tiny_base_dir, tmp_path, "writer", "CAUSAL_LM", None)
    prompts = [f"{TEXTS[i % len(TEXTS)]} please {i}" for i in range(110)]
    path = tmp_path / "prompts.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": prompts, "answer": ["paris"] * 110}), path)
    job = submit_as(store, "writer", path, "prompt", "answer")
    final = execute_job("acme", "writer", 1, job.id, settings(store, tiny_base_dir, tmp_path))
    assert final is not None and final.status == "done", final
    document = ProfileJobs(store).read_profile("acme", "writer", 1)
    assert document is not None and document["task"] == "causal-lm"
    builder = PromptBuilder(AutoTokenizer.from_pretrained(tiny_base_dir),
                            PromptLimits(max_input_tokens=512, max_model_len=1024,
                                         max_new_tokens=16))
    served = [len(builder.from_text(p, raw=False)) for p in prompts]
    lengths = document["input_length_tokens"]
    assert lengths["count"] == 110
    assert lengths["mean"] == pytest.approx(sum(served) / len(served))
    assert lengths["min"] == min(served) and lengths["max"] == max(served)
    assert document["confidence"]["count"] == 110  # from the expected answers
    assert document["label_distribution"] is None
    assert parse_profile(document).input_length is not None


def test_a_token_classifier_is_profiled_from_word_lists(
        store: ObjectStore, tiny_base_dir: Path, tmp_path: Path) -> None:
    tags = ["O", "B-X", "I-X"]
    register_plain(store, tiny_base_dir, tmp_path, "ner", "TOKEN_CLS", tags)
    path = tmp_path / "ner.jsonl"
    rows = [{"tokens": t.split(), "tags": ["O"] * (len(t.split()) - 1) + ["B-X"]}
            for t in TEXTS] * 15
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = submit_as(store, "ner", path, "tokens", "tags")
    final = execute_job("acme", "ner", 1, job.id, settings(store, tiny_base_dir, tmp_path))
    assert final is not None and final.status == "done", final
    document = ProfileJobs(store).read_profile("acme", "ner", 1)
    assert document is not None
    words = sum(len(t.split()) for t in TEXTS) * 15
    assert document["label_distribution"]["counts"] == {
        "O": words - len(rows), "B-X": len(rows), "I-X": 0}
    assert document["embedding_served"]["sample_size"] == len(rows)
