"""Retraining runs of causal-lm, token-cls and seq-cls adapters on the tiny model, end to end.

An active version is trained and registered with its data in the store, feedback rows
are written where the service writes them, and ``execute_run`` trains a candidate,
evaluates both versions on the same held-out set and decides. Which side wins is forced,
so the decision is checked in both directions of each gate metric: the active version's
weights are spoiled (the candidate must be promoted), then the next candidate's are
(it must be kept back, with the reason).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

from loraswap.adapters.lora_format import WEIGHTS_FILE
from loraswap.adapters.package import (
    PROFILE_FILE,
    package_file_digests,
    read_manifest,
    write_manifest,
)
from loraswap.adapters.registry import AdapterRegistry
from loraswap.adapters.store import FileSystemStore
from loraswap.adapters.validation import ValidationLimits
from loraswap.base_model.fingerprint import BaseModelFingerprint
from loraswap.jobs.retrain_runs import RunRecord, RunStore, RunTrigger, new_run_id
from loraswap.jobs.training_data import upload_to_store
from loraswap.tenants.directory import TenantDirectory
from loraswap.training import retrain, runner
from loraswap.training.config import build_config
from loraswap.training.data import TextExample
from loraswap.training.retrain_data import MIN_SELECTION_VALIDATION, normalise
from loraswap.training.runner import TrainOutcome, run_training

TENANT = "acme"
NER_SENTENCE = "the\tO\nzzqxv\tB-Disease\ndisease\tI-Disease\nof\tO\nthe\tO\ndog\tO\n\n"


@dataclass
class Setup:
    """A store holding one active version of ``adapter`` with its data, and feedback."""

    root: Path
    store: FileSystemStore
    adapter: str
    base: Path

    def registry(self) -> AdapterRegistry:
        return AdapterRegistry(self.store, BaseModelFingerprint.from_folder(self.base),
                               ValidationLimits(), self.root / "registry-cache",
                               refresh_seconds=0.0)

    def run(self) -> RunRecord:
        """One run to its decision, the way ``loraswap retrain run`` does it."""
        runs = RunStore(self.store)
        run_id = new_run_id()
        assert runs.claim(TENANT, self.adapter, run_id) is None
        runs.save(RunRecord(id=run_id, tenant=TENANT, adapter=self.adapter,
                            trigger=RunTrigger(kind="manual")))
        return retrain.execute_run(run_id, retrain.RetrainSettings(
            store_uri=f"file://{self.root / 'store'}", base_model=self.base,
            cache_dir=self.root / "run-cache", feedback_holdout=0.5))


def spoil(package: Path, scale: float) -> None:
    """Make a package answer badly: noise in its LoRA B factors (and A factors when
    ``scale`` > 2: far worse); a classification head that says ``O`` (tag 0) for every
    token. Its manifest's digests follow."""
    generator = torch.Generator().manual_seed(0)
    tensors = load_file(str(package / WEIGHTS_FILE))
    for name, tensor in tensors.items():
        if "lora_B" in name or ("lora_A" in name and scale > 2):
            tensors[name] = torch.randn(tensor.shape, generator=generator) * scale
        elif "score" in name:
            tensors[name] = torch.zeros_like(tensor)
            if name.endswith("bias"):
                tensors[name][0] = 10.0
    save_file(tensors, str(package / WEIGHTS_FILE))
    manifest = read_manifest(package)
    write_manifest(package, manifest.model_copy(update={"files": package_file_digests(package)}))


def put_feedback(store: FileSystemStore, adapter: str, rows: list[dict[str, Any]]) -> None:
    """Feedback rows, as one Parquet batch where the service writes them."""
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    owner = TenantDirectory(store).get(TENANT).data_owner  # feedback/{name}.{id}/…
    store.put(f"feedback/{owner}/{adapter}/batch-20260101T000000000000-0001.parquet",
              sink.getvalue())


def feedback_row(i: int, task: str, text_input: str, **truth: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"label": None, "text": None, "labels": None, **truth}
    return {"prediction_id": f"pred-{i}", "index": 0, "version": "1", "task": task,
            "input": text_input, "predicted_label": None, "received_at": float(i), **values}


def make_setup(root: Path, base: Path, task: str, adapter: str, train: Path,
               test: Path | None, steps: int) -> Setup:
    """Train the first version (then spoil it), put its data in the store, register it."""
    store = FileSystemStore(root / "store")
    TenantDirectory(store).create(TENANT)
    keys = {"train": upload_to_store(store, TENANT, adapter, train)}
    if test is not None:
        keys["test"] = upload_to_store(store, TENANT, adapter, test)
    outcome = run_training(build_config({}, {
        "task": task, "data": train, "test_data": test, "output": root / "v1",
        "base_model": base, "max_steps": steps, "batch_size": 8, "progress": False,
        "learning_rate": 1e-2, "precision": "fp32", "val_fraction": 0.2}))
    retrain.record_data_store(outcome.output, keys)
    # Mildly: the candidate continues from these weights and must be able to recover.
    spoil(outcome.output, scale=0.5)
    setup = Setup(root, store, adapter, base)
    setup.registry().register(TENANT, adapter, outcome.output, activate=True)
    return setup


def spoiling_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fault seam: the next candidate comes out of training spoiled (more than the
    first active version was: the candidates continue from it, so they start spoiled)."""
    def train_then_spoil(cfg: Any, on_step: Callable[..., None] | None = None) -> TrainOutcome:
        outcome = run_training(cfg, on_step)
        spoil(outcome.output, scale=8.0)
        return outcome

    monkeypatch.setattr(retrain, "run_training", train_then_spoil)


def recording_splits(monkeypatch: pytest.MonkeyPatch) -> list[tuple[set[str], set[str]]]:
    """The normalised inputs each candidate trained on and held out (its validation, the
    only rows its drift reference is drawn from), as the trainer split them."""
    seen: list[tuple[set[str], set[str]]] = []
    read = runner.read_splits

    def record(cfg: Any) -> runner.Splits:
        splits = read(cfg)
        def inputs(part: list[Any]) -> set[str]:
            return {normalise(e.text) for e in part if isinstance(e, TextExample)}

        seen.append((inputs(splits.train), inputs(splits.held_out)))
        return splits

    monkeypatch.setattr(runner, "read_splits", record)
    return seen


def check_same_heldout(run: RunRecord) -> None:
    """Both versions scored on the same two held-out sets (test split, new traffic)."""
    assert run.status == "finished", run.reason
    for side in ("active", "candidate"):
        scores = run.evaluations[side]
        assert scores["original/examples"] == run.data["heldout"]["original"]
        assert scores["new_traffic/examples"] == run.data["heldout"]["new_traffic"]
    assert run.data["heldout_total"] == sum(run.data["heldout"].values())
    # The candidate continued from the active version's weights, on a recorded mix.
    assert run.data["mix"]["start"] == "active version"
    assert run.data["mix"]["replay_original"] <= run.data["original_train"]


@pytest.fixture
def sft_files(tmp_path: Path) -> tuple[Path, Path]:
    train = tmp_path / "sft.jsonl"
    train.write_text("".join(json.dumps({"instruction": "name three primary colors",
                                         "input": "", "output": "red, yellow and blue"}) + "\n"
                             for _ in range(16)))
    test = tmp_path / "sft-test.jsonl"
    test.write_text(json.dumps({"messages": [
        {"role": "user", "content": "name three primary colors"},
        {"role": "assistant", "content": "red, yellow and blue"}]}) + "\n")
    return train, test


def test_a_causal_lm_run_promotes_on_lower_loss_and_keeps_a_worse_candidate(
        tiny_base_dir: Path, tmp_path: Path, sft_files: tuple[Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    setup = make_setup(tmp_path, tiny_base_dir, "causal-lm", "writer", *sft_files, steps=12)
    chat = json.dumps([{"role": "user", "content": "name three primary colors"}])
    put_feedback(setup.store, "writer", [
        *(feedback_row(i, "causal-lm", f"what is the capital of france? ({i})",
                       text="paris is the capital of france.") for i in range(8)),
        *(feedback_row(10 + i, "causal-lm", chat.replace("colors", f"colors {i}"),
                       text="red, yellow and blue") for i in range(4)),
        # The same question twice, differently spaced: one example.
        feedback_row(30, "causal-lm", "what  is the capital of France? (0)",
                     text="paris is the capital of france."),
        feedback_row(20, "causal-lm", "say nothing", text=" ")])

    first = setup.run()
    check_same_heldout(first)
    assert (first.task, first.gate_metric, first.gate_direction) == (
        "causal-lm", "eval_loss", "lower")
    assert first.data["original_train"] == 16 and first.data["feedback_dropped"] == 1
    # The split keeps one row per normalised input (issue 23): the re-spelt duplicate is
    # counted, not split.
    assert first.data["feedback_train"] + first.data["feedback_holdout"] == 12
    assert first.data["feedback_duplicates"] == 1
    assert first.data["heldout"]["original"] == 1
    active, candidate = (first.evaluations[s]["new_traffic/eval_loss"]
                         for s in ("active", "candidate"))
    assert candidate < active  # the active version was spoiled
    assert first.decision == "promoted" and ">= margin" in (first.reason or "")
    assert setup.registry().active(TENANT, "writer").key.version == first.candidate_version == "2"
    data_store = setup.registry().active(TENANT, "writer").manifest.training["data_store"]
    assert setup.store.exists(data_store["trained_on"])

    spoiling_training(monkeypatch)
    second = setup.run()  # starts from version 2's record of the original data
    check_same_heldout(second)
    assert second.data["original_train"] == 16
    assert second.evaluations["candidate"]["new_traffic/eval_loss"] > \
        second.evaluations["active"]["new_traffic/eval_loss"]
    assert second.decision == "kept"
    assert "eval_loss" in (second.reason or "") and "< margin" in (second.reason or "")
    assert "version 3 registered inactive" in (second.reason or "")
    assert setup.registry().active(TENANT, "writer").version == 2
    assert RunStore(setup.store).claim(TENANT, "writer", "after") is None  # released


def test_a_token_cls_run_promotes_on_higher_f1_and_keeps_a_worse_candidate(
        tiny_base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train, test = tmp_path / "ner.conll", tmp_path / "ner-test.conll"
    train.write_text(NER_SENTENCE * 24)
    test.write_text(NER_SENTENCE * 2)
    setup = make_setup(tmp_path, tiny_base_dir, "token-cls", "ner", train, test, steps=30)
    tags = ["O", "B-Disease", "I-Disease", "I-Disease", "O", "O", "O", "O"]
    put_feedback(setup.store, "ner", [
        *(feedback_row(i, "token-cls", f"the zzqxv-disease of the dog {i}", labels=tags)
          for i in range(8)),
        feedback_row(20, "token-cls", "the dog", labels=["O"])])  # not one tag per word

    first = setup.run()
    check_same_heldout(first)
    assert (first.task, first.gate_metric, first.gate_direction) == ("token-cls", "f1",
                                                                     "higher")
    assert first.data["feedback_dropped"] == 1
    assert first.data["feedback_train"] + first.data["feedback_holdout"] == 8
    assert first.data["heldout"]["original"] == 2
    assert first.evaluations["active"]["new_traffic/f1"] == 0.0  # spoiled: every word O
    assert first.evaluations["candidate"]["new_traffic/f1"] > 0.5
    assert first.decision == "promoted" and ">= margin" in (first.reason or "")
    assert setup.registry().active(TENANT, "ner").version == 2

    spoiling_training(monkeypatch)
    second = setup.run()
    check_same_heldout(second)
    assert second.evaluations["candidate"]["new_traffic/f1"] == 0.0
    assert second.decision == "kept" and "< margin" in (second.reason or "")
    assert setup.registry().active(TENANT, "ner").version == 2


def test_a_seq_cls_run_promotes_on_higher_accuracy_and_keeps_a_worse_candidate(
        tiny_base_dir: Path, tmp_path: Path, csv_data: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The seq-cls gate (the package evaluator's accuracy, higher is better) decides both
    ways: a spoiled active version (always its first label) loses to a trained candidate,
    and a spoiled candidate is kept out."""
    test = tmp_path / "test.csv"
    test.write_text("text,label\n" + "".join(
        f"{p} {i},pos\n{n} {i},neg\n" for i, (p, n) in enumerate(zip(
            ("the quick brown fox", "the lazy dog jumps"),
            ("paris is the capital", "capital of france"), strict=True))))
    setup = make_setup(tmp_path, tiny_base_dir, "seq-cls", "mood", csv_data, test, steps=30)
    put_feedback(setup.store, "mood", [
        *(feedback_row(i, "seq-cls", f"brown fox over the dog {i}", label="pos")
          for i in range(4)),
        *(feedback_row(10 + i, "seq-cls", f"name three primary colors {i}", label="neg")
          for i in range(4))])

    splits = recording_splits(monkeypatch)
    first = setup.run()
    check_same_heldout(first)
    assert (first.task, first.gate_metric, first.gate_direction) == ("seq-cls", "accuracy",
                                                                     "higher")
    # The candidate's validation (its drift reference) holds no input it trains on,
    # although the feedback is repeated in its training table.
    (trained, validation), = splits
    assert validation and not trained & validation, (trained, validation)
    assert first.data["validation"] == len(validation) < MIN_SELECTION_VALIDATION
    assert first.data["checkpoint"].startswith("final weights")
    active, candidate = (first.evaluations[s]["new_traffic/accuracy"]
                         for s in ("active", "candidate"))
    assert active <= 0.75  # spoiled: one label for everything, on mixed new traffic
    assert candidate > active, (first.evaluations, first.data)
    assert first.decision == "promoted" and ">= margin" in (first.reason or "")
    assert setup.registry().active(TENANT, "mood").version == 2
    # Its drift reference (profile.json) is those held-out validation inputs only.
    profile = json.loads((setup.registry().local_folder(TENANT, "mood", 2)
                          / PROFILE_FILE).read_text())
    for section in ("confidence", "predicted_label_distribution"):
        assert profile[section]["sample"] == {"held_out": len(validation), "train": 0}

    spoiling_training(monkeypatch)
    second = setup.run()
    check_same_heldout(second)
    assert second.evaluations["candidate"]["new_traffic/accuracy"] < \
        second.evaluations["active"]["new_traffic/accuracy"]
    assert second.decision == "kept" and "< margin" in (second.reason or "")
    assert setup.registry().active(TENANT, "mood").version == 2
