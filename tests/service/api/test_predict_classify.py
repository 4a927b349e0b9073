"""``/v1/predict`` with seq-cls and token-cls adapters: answers, entity spans, refusals."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from peft import PeftModel
from transformers import (
    AutoTokenizer,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
)

from loraswap.service.api.classification import merge_entities, sequence_output, split_tag
from tests.utils.entities import expected_spans

TEXTS = ["the quick brown fox jumps over the lazy dog", "paris is the capital of france"]
NER_TEXT = "name three primary colors: red, yellow and blue"
RESPONSE_KEYS = {"id", "adapter", "adapter_version", "task", "outputs", "usage"}


def peft_probs(base_dir: Path, folder: Path, text: str) -> torch.Tensor:
    """PEFT's probabilities for ``text`` tokenized as is (no chat template), fp32."""
    manifest = json.loads((folder / "loraswap.json").read_text())
    model_class = (LlamaForSequenceClassification if manifest["task"] == "seq-cls"
                   else LlamaForTokenClassification)
    model = model_class.from_pretrained(base_dir, num_labels=len(manifest["labels"]),
                                        dtype=torch.float32)
    model = PeftModel.from_pretrained(model, folder).eval()
    ids = AutoTokenizer.from_pretrained(base_dir)(text)["input_ids"]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    return torch.softmax(logits.float(), dim=-1)


def post(client: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return client.post("/v1/predict", json=body)


def test_seq_cls_answers_label_and_scores_equal_to_peft(
        live_server, make_classifier_adapter, tiny_base_dir) -> None:  # type: ignore[no-untyped-def]
    folder = make_classifier_adapter("sentiment", task="seq-cls", seed=5)
    server = live_server()
    response = post(server.client, {"adapter": "sentiment", "inputs": TEXTS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == RESPONSE_KEYS
    assert body["adapter"] == "sentiment" and body["task"] == "seq-cls"
    assert isinstance(body["adapter_version"], str) and body["adapter_version"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    prompt_tokens = sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 0,
                             "total_tokens": prompt_tokens}
    labels = ["negative", "neutral", "positive"]
    for text, output in zip(TEXTS, body["outputs"], strict=True):
        assert set(output) == {"label", "scores"}
        assert list(output["scores"]) == labels
        expected = peft_probs(tiny_base_dir, folder, text)
        got = torch.tensor([output["scores"][label] for label in labels])
        torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)
        assert output["label"] == labels[int(expected.argmax())]
    # One input alone gets the same answer as in a batch.
    single = post(server.client, {"adapter": "sentiment", "inputs": TEXTS[1]}).json()
    assert single["outputs"][0]["label"] == body["outputs"][1]["label"]


def test_token_cls_answers_entities_with_character_offsets(
        live_server, make_classifier_adapter, tiny_base_dir) -> None:  # type: ignore[no-untyped-def]
    labels = ["O", "B-COLOR", "I-COLOR", "B-NUM", "I-NUM"]
    folder = make_classifier_adapter("colors", task="token-cls", labels=labels, seed=11)
    server = live_server()
    response = post(server.client, {"adapter": "colors", "inputs": NER_TEXT})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == RESPONSE_KEYS and body["task"] == "token-cls"
    entities = body["outputs"][0]["entities"]
    assert entities, "the random head should tag something"
    for entity in entities:
        assert set(entity) == {"text", "label", "start", "end", "score"}
        assert entity["text"] == NER_TEXT[entity["start"]:entity["end"]]
        assert not entity["text"][0].isspace()
        assert entity["label"] in {"COLOR", "NUM"}
        assert 0 < entity["score"] <= 1
    # The spans of PEFT's per-token labels, chunked by seqeval (tests/utils/entities.py,
    # no service code); each score is the mean of PEFT's probabilities over the span.
    probs = peft_probs(tiny_base_dir, folder, NER_TEXT)
    offsets = [tuple(pair) for pair in AutoTokenizer.from_pretrained(tiny_base_dir)(
        NER_TEXT, return_offsets_mapping=True)["offset_mapping"]]
    best = probs.argmax(-1).tolist()
    expected = expected_spans(NER_TEXT, offsets, [labels[i] for i in best])
    assert [(e["text"], e["label"], e["start"], e["end"]) for e in entities] == [
        span[:4] for span in expected]
    for entity, span in zip(entities, expected, strict=True):
        mean = sum(float(probs[t, best[t]]) for t in span.tokens) / len(span.tokens)
        assert entity["score"] == pytest.approx(mean, abs=1e-5)


def test_classification_and_generation_run_side_by_side(
        live_server, make_classifier_adapter, make_adapter) -> None:  # type: ignore[no-untyped-def]
    make_classifier_adapter("sentiment", task="seq-cls", seed=5)
    make_classifier_adapter("ner", task="token-cls", seed=6)
    make_adapter("writer", seed=7)
    server = live_server(max_loras=2)
    requests = [
        {"adapter": "writer", "inputs": "hello",
         "parameters": {"max_new_tokens": 16, "ignore_eos": True}},
        {"adapter": "sentiment", "inputs": TEXTS},
        {"adapter": "ner", "inputs": NER_TEXT},
        {"inputs": "hi", "parameters": {"max_new_tokens": 4}},
    ]
    alone = [post(server.client, r).json() for r in requests]

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/predict", json=r)
                                          for r in requests))

    for single, response in zip(alone, asyncio.run(together()), strict=True):
        assert response.status_code == 200, response.text
        mixed = response.json()
        assert (mixed["task"], mixed["adapter_version"]) == (single["task"],
                                                             single["adapter_version"])
        if mixed["task"] == "seq-cls":
            for a, b in zip(mixed["outputs"], single["outputs"], strict=True):
                assert a["label"] == b["label"]
                assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)
        elif mixed["task"] == "token-cls":
            spans = [[(e["label"], e["start"], e["end"]) for e in o["entities"]]
                     for o in (mixed["outputs"][0], single["outputs"][0])]
            assert spans[0] == spans[1]
        else:
            assert mixed["outputs"] == single["outputs"]


def test_generation_answers_carry_task_and_version(live_server, make_adapter) -> None:  # type: ignore[no-untyped-def]
    make_adapter("writer", seed=7)
    server = live_server()
    params = {"max_new_tokens": 8, "ignore_eos": True}
    base = post(server.client, {"inputs": "hi", "parameters": params}).json()
    assert set(base) == RESPONSE_KEYS
    assert (base["task"], base["adapter"], base["adapter_version"]) == ("causal-lm", None, None)
    assert base["outputs"][0]["tokens"] == 8 and base["outputs"][0]["finish_reason"] == "length"
    assert base["usage"]["completion_tokens"] == 8
    adapted = post(server.client, {"adapter": "writer", "inputs": "hi",
                                   "parameters": params}).json()
    assert (adapted["task"], adapted["adapter"]) == ("causal-lm", "writer")
    assert adapted["adapter_version"]
    # The answer named as the adapter's is the adapter's: it differs from the base's.
    assert adapted["outputs"][0]["text"] != base["outputs"][0]["text"]


def test_classification_refuses_what_does_not_apply(
        live_server, make_classifier_adapter) -> None:  # type: ignore[no-untyped-def]
    make_classifier_adapter("sentiment", task="seq-cls", seed=5)
    make_classifier_adapter("ner", task="token-cls", seed=6)
    server = live_server(max_input_tokens=16)
    client = server.client

    def refused(body: dict[str, Any], status: int = 400) -> str:
        response = post(client, body)
        assert response.status_code == status, response.text
        return str(response.json()["error"]["message"])

    message = refused({"adapter": "sentiment", "inputs": "hi", "stream": True})
    assert "stream is not supported" in message and "seq-cls" in message
    message = refused({"adapter": "ner", "inputs": "hi",
                       "parameters": {"max_new_tokens": 5, "temperature": 0.5}})
    assert "parameters max_new_tokens, temperature do not apply" in message
    assert "token-cls" in message
    message = refused({"adapter": "sentiment",
                       "inputs": [{"role": "user", "content": "hello"}]})
    assert "chat messages are not accepted" in message
    message = refused({"adapter": "sentiment", "inputs": "the quick brown fox " * 10}, 413)
    assert "limit of 16" in message
    for path, body in (("/v1/chat/completions",
                        {"model": "sentiment", "messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/completions", {"model": "ner", "prompt": "hi"})):
        response = client.post(path, json=body)
        assert response.status_code == 400, response.text
        assert "/v1/predict" in response.json()["error"]["message"]


# --- Entity spans and labels (pure functions) ----------------------------------------

TEXT = "John lives in New York"
# Byte-level BPE offsets: every token after the first carries its leading space.
OFFSETS = [(0, 4), (4, 10), (10, 13), (13, 17), (17, 22)]


def spans(tags: list[str], scores: list[float] | None = None, text: str = TEXT,
          offsets: list[tuple[int, int]] = OFFSETS) -> list[tuple[str, str, int, int, float]]:
    entities = merge_entities(text, offsets, tags, scores or [1.0] * len(tags))
    return [(e.text, e.label, e.start, e.end, e.score) for e in entities]


def test_bio_tags_merge_into_spans_without_the_leading_space() -> None:
    tags = ["B-PER", "O", "O", "B-LOC", "I-LOC"]
    assert spans(tags, [0.9, 0.8, 0.7, 0.6, 0.4]) == [
        ("John", "PER", 0, 4, 0.9), ("New York", "LOC", 14, 22, pytest.approx(0.5))]


def test_spans_drop_edge_punctuation_that_raw_text_glues_to_words() -> None:
    text = "polyposis coli (APC) tumour-suppressor, and Wiskott-Aldrich syndrome (WAS)."
    # SmolLM2's pieces: poly|pos|is| coli| (|AP|C|)| tumour|-|supp|ressor|,| and| W|isk|ott|-|
    # A|ld|rich| syndrome| (|W|AS|). - the tagger also marks pieces that carry punctuation.
    offsets = [(0, 4), (4, 7), (7, 9), (9, 14), (14, 16), (16, 18), (18, 19), (19, 20),
               (20, 27), (27, 28), (28, 32), (32, 38), (38, 39), (39, 43), (43, 45), (45, 48),
               (48, 51), (51, 52), (52, 53), (53, 55), (55, 59), (59, 68), (68, 70), (70, 71),
               (71, 73), (73, 75)]
    tags = ["B-D", "I-D", "I-D", "I-D", "I-D", "B-D", "I-D", "I-D", "B-D", "I-D", "O", "O",
            "I-D", "O", "B-D", *["I-D"] * 11]
    found = [(e.text, e.start, e.end)
             for e in merge_entities(text, offsets, tags, [1.0] * len(tags))]
    assert found == [("polyposis coli", 0, 14), ("APC", 16, 19), ("tumour", 21, 27),
                     ("Wiskott-Aldrich syndrome (WAS)", 44, 74)]
    for entity_text, start, end in found:
        assert text[start:end] == entity_text


def test_lenient_bio_rules() -> None:
    # I-X after O starts a span; I-X after another type starts a new span.
    assert spans(["I-PER", "O", "O", "I-LOC", "I-LOC"]) == [
        ("John", "PER", 0, 4, 1.0), ("New York", "LOC", 14, 22, 1.0)]
    assert spans(["B-PER", "I-LOC", "O", "O", "O"]) == [
        ("John", "PER", 0, 4, 1.0), ("lives", "LOC", 5, 10, 1.0)]
    # B-X right after X starts a second span of the same type.
    assert spans(["O", "O", "O", "B-LOC", "B-LOC"]) == [
        ("New", "LOC", 14, 17, 1.0), ("York", "LOC", 18, 22, 1.0)]
    # IOBES: E-X and S-X end a span.
    assert spans(["S-PER", "B-LOC", "E-LOC", "I-LOC", "O"]) == [
        ("John", "PER", 0, 4, 1.0), ("lives in", "LOC", 5, 13, 1.0),
        ("New", "LOC", 14, 17, 1.0)]
    # Tags without a prefix group by type.
    assert spans(["PER", "PER", "O", "LOC", "LOC"]) == [
        ("John lives", "PER", 0, 10, 1.0), ("New York", "LOC", 14, 22, 1.0)]


def test_special_tokens_and_whitespace_tokens() -> None:
    # A special token (no characters) at the start is skipped and ends spans.
    offsets = [(0, 0), *OFFSETS, (22, 22)]
    assert spans(["B-PER", "I-PER", "O", "O", "O", "I-LOC", "I-LOC"], offsets=offsets) == [
        ("John", "PER", 0, 4, 1.0), ("York", "LOC", 18, 22, 1.0)]
    # A space token alone is no entity; one that starts a span is trimmed off it.
    text = "go  home"
    offsets = [(0, 2), (2, 3), (3, 8)]
    assert spans(["O", "B-X", "O"], text=text, offsets=offsets) == []
    assert spans(["O", "B-X", "I-X"], text=text, offsets=offsets) == [
        ("home", "X", 4, 8, 1.0)]
    # Non-ASCII text: offsets are characters, not bytes.
    text = "café à Paris"
    assert spans(["O", "O", "B-LOC"], text=text, offsets=[(0, 4), (4, 6), (6, 12)]) == [
        ("Paris", "LOC", 7, 12, 1.0)]


def test_tag_parsing_and_sequence_label() -> None:
    assert split_tag("B-PER") == ("B", "PER")
    assert split_tag("I-B-X") == ("I", "B-X")
    assert split_tag("O") == ("O", None)
    assert split_tag("LABEL_3") == ("I", "LABEL_3")
    out = sequence_output([0.2, 0.5, 0.3], ["a", "b", "c"])
    assert out.label == "b" and out.scores == {"a": 0.2, "b": 0.5, "c": 0.3}
    assert sequence_output([0.5, 0.5], ["x", "y"]).label == "x"
