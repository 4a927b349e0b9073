"""Adapters trained by `loraswap train` answer the same through the service as through PEFT.

One tiny model of each task kind is trained for a few steps, registered through the admin
API like a user would, and asked through `/v1/predict`; PEFT in-process, on the same
base weights in fp32, is the reference.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from loraswap.adapters.package import AttentionMode, TextSplit, read_manifest
from loraswap.adapters.words import SplitText
from loraswap.service.api.classification import merge_entities
from loraswap.training.config import build_config
from loraswap.training.runner import run_training
from loraswap.training.tasks import bidirectional_mask
from tests.service.conftest import LiveServer, ServerFactory, upload_files

SEQ_TEXTS = ["the quick brown fox 3", "capital of france 7", "name three primary colors"]
NER_TEXT = "the zzqxv-disease (of) the dog."


@pytest.fixture(scope="module")
def trained(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One package per task kind, trained for a few steps on the tiny base."""
    root = tmp_path_factory.mktemp("trained")
    table = root / "seq.csv"
    with table.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(24):
            writer.writerow([f"the quick brown fox {i}", "pos"])
            writer.writerow([f"capital of france {i}", "neg"])
    conll = root / "ner.tsv"
    conll.write_text("the\tO\nzzqxv\tB-Disease\ndisease\tI-Disease\nof\tO\nthe\tO\ndog\tO\n\n"
                     * 24, encoding="utf-8")
    sft = root / "sft.jsonl"
    sft.write_text("".join(json.dumps({"instruction": "name three primary colors", "input": "",
                                       "output": "red, yellow and blue"}) + "\n"
                           for _ in range(16)), encoding="utf-8")
    packages = {}
    for task, data in (("seq-cls", table), ("token-cls", conll), ("causal-lm", sft)):
        cfg = build_config({}, {
            "task": task, "data": data, "output": root / task, "base_model": tiny_base_dir,
            "max_steps": 6, "batch_size": 8, "progress": False, "learning_rate": 5e-3,
            "precision": "fp32",
        })
        packages[task] = run_training(cfg).output
    return packages


@pytest.fixture
def server(live_server: ServerFactory, trained: dict[str, Path]) -> LiveServer:
    """A dev-mode server with the three packages registered for tenant ``acme``."""
    server = live_server()
    created = server.client.post("/admin/tenants", json={"name": "acme"})
    server.client.headers["Authorization"] = f"Bearer {created.json()['api_key']}"
    for task, folder in trained.items():
        response = server.client.post(f"/admin/adapters/acme/{task}/versions",
                                      files=upload_files(folder))
        assert response.status_code == 201, response.text
    return server


def _predict(server: LiveServer, adapter: str, inputs: Any, **extra: Any) -> dict[str, Any]:
    response = server.client.post("/v1/predict", json={"adapter": adapter, "inputs": inputs,
                                                       **extra})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _peft(auto: Any, base: Path, package: Path, **kwargs: Any) -> Any:
    model = auto.from_pretrained(base, torch_dtype=torch.float32, **kwargs)
    return PeftModel.from_pretrained(model, package).eval()


def test_trained_seq_cls_adapter_matches_peft(server: LiveServer, trained: dict[str, Path],
                                              tiny_base_dir: Path) -> None:
    package = trained["seq-cls"]
    labels = read_manifest(package).labels or []
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    model = _peft(AutoModelForSequenceClassification, tiny_base_dir, package,
                  num_labels=len(labels), pad_token_id=tokenizer.pad_token_id)
    body = _predict(server, "acme/seq-cls", SEQ_TEXTS)
    assert body["task"] == "seq-cls" and body["adapter_version"] == "1"
    for text, output in zip(SEQ_TEXTS, body["outputs"], strict=True):
        with torch.no_grad():
            logits = model(**tokenizer(text, return_tensors="pt")).logits[0]
        expected = torch.softmax(logits.float(), -1)
        assert output["label"] == labels[int(expected.argmax())]
        got = torch.tensor([output["scores"][label] for label in labels])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_trained_token_cls_adapter_matches_peft(server: LiveServer, trained: dict[str, Path],
                                                tiny_base_dir: Path) -> None:
    package = trained["token-cls"]
    labels = read_manifest(package).labels or []
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    model = _peft(AutoModelForTokenClassification, tiny_base_dir, package,
                  num_labels=len(labels))
    # token-cls trains with bidirectional attention on text split into words and
    # punctuation by default; PEFT gets the same mask and the same split text.
    manifest = read_manifest(package)
    assert manifest.attention is AttentionMode.BIDIRECTIONAL
    assert manifest.text_split is TextSplit.WORDS
    split = SplitText.of(NER_TEXT)
    encoded = tokenizer(split.joined, return_offsets_mapping=True, return_tensors="pt")
    offsets = [split.original_span(*pair) for pair in encoded.pop("offset_mapping")[0].tolist()]
    mask = bidirectional_mask(encoded["attention_mask"])
    with torch.no_grad():
        logits = model(input_ids=encoded["input_ids"], attention_mask=mask).logits[0]
        probs = torch.softmax(logits.float(), -1)
    best = probs.argmax(-1).tolist()
    expected = merge_entities(NER_TEXT, offsets, [labels[i] for i in best],
                              [float(probs[t, i]) for t, i in enumerate(best)])
    body = _predict(server, "acme/token-cls", NER_TEXT)
    got = body["outputs"][0]["entities"]
    # Written by hand: training taught "zzqxv disease" (B, I); the text sent is split into
    # words and punctuation, so the hyphen is a token of its own, tagged O, and the two
    # words come back as two spans of the text as sent.
    word = NER_TEXT.index("zzqxv")
    assert [(e["text"], e["label"], e["start"], e["end"]) for e in got] == [
        ("zzqxv", "Disease", word, word + 5), ("disease", "Disease", word + 6, word + 13)]
    assert len(expected) == len(got)
    for entity, reference in zip(got, expected, strict=True):
        assert entity["score"] == pytest.approx(reference.score, abs=1e-5)


def test_trained_causal_lm_adapter_matches_peft(server: LiveServer, trained: dict[str, Path],
                                                tiny_base_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    model = _peft(AutoModelForCausalLM, tiny_base_dir, trained["causal-lm"])
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "name three primary colors"}], tokenize=False,
        add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        generated = model.generate(input_ids=ids, max_new_tokens=12,
                                   do_sample=False)[0, ids.shape[1]:]
    body = _predict(server, "acme/causal-lm", "name three primary colors",
                    parameters={"max_new_tokens": 12})
    assert body["task"] == "causal-lm"
    assert body["outputs"][0]["text"].startswith("red, yellow and blue")  # it learnt
    assert body["outputs"][0]["text"] == tokenizer.decode(generated, skip_special_tokens=True)
