"""The OpenAI-compatible API, driven by the official ``openai`` client against a real server."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest
from transformers import AutoTokenizer

MESSAGES = [{"role": "system", "content": "you are terse"},
            {"role": "user", "content": "what is the capital of france?"}]
PROMPT = "the quick brown fox"
GREEDY: dict[str, Any] = {"temperature": 0, "extra_body": {"ignore_eos": True}}


@pytest.fixture
def served(live_server, make_adapter, tiny_base_dir):  # type: ignore[no-untyped-def]
    """Two adapters and the base behind a real server; an ``openai`` client for it."""
    make_adapter("alpha", rank=4, seed=1)
    make_adapter("beta", rank=8, targets=("q_proj", "o_proj", "down_proj"), seed=2)
    server = live_server(max_new_tokens_limit=64)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    yield server, client, tiny_base_dir.name
    client.close()


def counts(usage: Any) -> tuple[int, int, int]:
    """Token counts of an SDK usage object or a JSON usage dict."""
    if isinstance(usage, dict):
        return usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]
    return usage.prompt_tokens, usage.completion_tokens, usage.total_tokens


def predict(server: Any, model: str | None, inputs: Any, tokens: int) -> dict[str, Any]:
    """The native API's answer for the same greedy request."""
    response = server.client.post("/v1/predict", json={
        "adapter": model, "inputs": inputs, "raw": isinstance(inputs, str),
        "parameters": {"max_new_tokens": tokens, "temperature": 0, "ignore_eos": True}})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_models_lists_adapters_and_base(served, make_adapter) -> None:  # type: ignore[no-untyped-def]
    _server, client, base = served
    classifier = make_adapter("sentiment", seed=3)
    config = json.loads((classifier / "adapter_config.json").read_text())
    (classifier / "adapter_config.json").write_text(json.dumps({**config, "task_type": "SEQ_CLS"}))

    models = {m.id: m for m in client.models.list()}
    assert set(models) == {base, "alpha", "beta", "sentiment"}
    assert models[base].owned_by == "loraswap" and models[base].object == "model"
    assert models[base].loraswap == {"kind": "base", "task": "causal-lm"}  # type: ignore[attr-defined]
    assert models["alpha"].loraswap == {"kind": "adapter", "task": "causal-lm"}  # type: ignore[attr-defined]
    assert models["sentiment"].loraswap == {"kind": "adapter", "task": "seq-cls"}  # type: ignore[attr-defined]
    assert client.models.retrieve("beta").id == "beta"

    with pytest.raises(openai.BadRequestError, match="/v1/predict"):
        client.chat.completions.create(model="sentiment", messages=MESSAGES)  # type: ignore[arg-type]


@pytest.mark.parametrize("model", ["alpha", "beta", "base"])
def test_completions_equal_predict(served, model: str) -> None:  # type: ignore[no-untyped-def]
    server, client, base = served
    tokenizer = AutoTokenizer.from_pretrained(server.settings.base_model)
    native = predict(server, None if model == "base" else model, PROMPT, 8)
    model_id = base if model == "base" else model

    whole = client.completions.create(model=model_id, prompt=PROMPT, max_tokens=8, **GREEDY)
    assert whole.id.startswith("cmpl-") and whole.object == "text_completion"
    assert whole.model == model_id
    assert whole.choices[0].text == native["outputs"][0]["text"]
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None
    assert whole.usage.prompt_tokens == len(tokenizer(PROMPT)["input_ids"])
    assert whole.usage.completion_tokens == 8
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 8
    assert counts(whole.usage) == counts(native["usage"])

    chunks = list(client.completions.create(
        model=model_id, prompt=PROMPT, max_tokens=8, stream=True,
        stream_options={"include_usage": True}, **GREEDY))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == whole.choices[0].text
    assert len(texts) > 1  # really streamed, not one final chunk
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert {c.id for c in chunks} == {chunks[0].id}


def test_completions_batch_stop_and_base_alias(served) -> None:  # type: ignore[no-untyped-def]
    _server, client, base = served
    alias = client.completions.create(model="base", prompt=PROMPT, max_tokens=6, **GREEDY)
    named = client.completions.create(model=base, prompt=PROMPT, max_tokens=6, **GREEDY)
    adapted = client.completions.create(model="alpha", prompt=PROMPT, max_tokens=6, **GREEDY)
    assert alias.choices[0].text == named.choices[0].text
    assert adapted.choices[0].text != named.choices[0].text  # the adapter is applied

    batch = client.completions.create(model="alpha", prompt=["red yellow", PROMPT],
                                      max_tokens=6, **GREEDY)
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.choices[1].text == adapted.choices[0].text
    assert batch.usage is not None and batch.usage.completion_tokens == 12

    text = adapted.choices[0].text
    stop = next(text[i:i + 2] for i in range(2, len(text) - 1) if text[i:i + 2].strip())
    stopped = client.completions.create(model="alpha", prompt=PROMPT, max_tokens=6, stop=stop,
                                        **GREEDY)
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[:text.index(stop)]

    default = client.completions.create(model="alpha", prompt=PROMPT, **GREEDY)
    assert default.usage is not None and default.usage.completion_tokens == 16  # OpenAI's 16


@pytest.mark.parametrize("model", ["alpha", "beta", "base"])
def test_chat_equals_predict(served, model: str) -> None:  # type: ignore[no-untyped-def]
    server, client, base = served
    tokenizer = AutoTokenizer.from_pretrained(server.settings.base_model)
    native = predict(server, None if model == "base" else model, MESSAGES, 8)
    rendered = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True,
                                             tokenize=False)

    whole = client.chat.completions.create(model=model, messages=MESSAGES,  # type: ignore[arg-type]
                                           max_completion_tokens=8, **GREEDY)
    assert whole.id.startswith("chatcmpl-") and whole.object == "chat.completion"
    assert whole.model == (base if model == "base" else model)
    message = whole.choices[0].message
    assert message.role == "assistant"
    assert message.content == native["outputs"][0]["text"]
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage is not None
    assert whole.usage.prompt_tokens == len(tokenizer(rendered, add_special_tokens=False)
                                            ["input_ids"])
    assert counts(whole.usage) == counts(native["usage"])

    chunks = list(client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=8, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}, **GREEDY))
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_errors_are_the_sdk_typed_exceptions(served) -> None:  # type: ignore[no-untyped-def]
    _server, client, _ = served
    with pytest.raises(openai.NotFoundError, match="no-such-adapter") as missing:
        client.completions.create(model="no-such-adapter", prompt="hi")
    assert missing.value.status_code == 404
    with pytest.raises(openai.NotFoundError, match="meta-llama/x"):
        client.chat.completions.create(model="meta-llama/x", messages=MESSAGES)  # type: ignore[arg-type]

    bad_requests: list[tuple[str, dict[str, Any]]] = [
        ("n", {"n": 17}), ("temperature", {"temperature": -1}),
        ("logprobs", {"logprobs": 21}), ("max_tokens", {"max_tokens": 65}),
        ("best_of", {"best_of": 2}), ("suffix", {"suffix": "x"}),
        ("logit_bias", {"logit_bias": {"999999": 1}}),
    ]
    for param, kwargs in bad_requests:
        with pytest.raises(openai.BadRequestError, match=param) as caught:
            client.completions.create(model="alpha", prompt="hi", **kwargs)
        assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    # The legacy function-calling fields (tools/tool_choice replaced them) are refused by name.
    with pytest.raises(openai.BadRequestError, match="functions") as legacy:
        client.chat.completions.create(model="alpha", messages=MESSAGES, functions=[{  # type: ignore[arg-type, call-overload]
            "name": "f", "parameters": {}}])
    assert legacy.value.body["param"] == "functions"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        client.chat.completions.create(model="alpha", messages=MESSAGES, top_logprobs=2)  # type: ignore[arg-type]
    # Nothing is silently dropped: an unknown field (extra_body included) is named.
    with pytest.raises(openai.BadRequestError, match="some_future_field"):
        client.chat.completions.create(model="alpha", messages=MESSAGES,  # type: ignore[arg-type]
                                       extra_body={"some_future_field": 1})
    with pytest.raises(openai.BadRequestError, match="guided_json"):
        client.completions.create(model="alpha", prompt="hi",
                                  extra_body={"guided_json": {"type": "object"}})

    # What SDKs send on their own (neutral values, bookkeeping fields) is accepted.
    fine = client.chat.completions.create(
        model="alpha", messages=MESSAGES, max_tokens=2, user="u1", logprobs=False,  # type: ignore[arg-type]
        metadata={"k": "v"})
    assert fine.choices[0].message.content is not None


def test_client_disconnect_cancels_the_stream(live_server) -> None:  # type: ignore[no-untyped-def]
    server = live_server(max_model_len=2048)
    body = {"model": "base", "prompt": PROMPT, "max_tokens": 1000, "stream": True,
            "temperature": 0, "ignore_eos": True}
    with server.client.stream("POST", "/v1/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                break
    series = 'loraswap_generations_finished_total{adapter="base",reason="cancelled"} 1.0'
    deadline = time.monotonic() + 60  # a condition poll; the bound only ends a hang
    while series not in server.client.get("/metrics").text:
        assert time.monotonic() < deadline, "the engine kept generating for a gone client"
        time.sleep(0.05)
    assert server.client.get("/admin/status").json()["engine"]["running"] == 0


def test_chat_default_max_tokens_fills_the_room(served) -> None:  # type: ignore[no-untyped-def]
    server, client, _ = served
    answer = client.chat.completions.create(model="beta", messages=MESSAGES, **GREEDY)  # type: ignore[arg-type]
    assert answer.usage is not None
    assert answer.usage.completion_tokens == server.settings.max_new_tokens_limit
    raw = httpx.post(f"{server.url}/v1/chat/completions", json={
        "model": "beta", "messages": MESSAGES, "max_tokens": 3, "temperature": 0})
    assert raw.status_code == 200
    assert raw.json()["choices"][0]["logprobs"] is None
