"""Log-probabilities, echo, n and the sampling controls of the OpenAI API, driven by the
official ``openai`` client against a real server on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from transformers import AutoTokenizer

from tests.service.engine.references import causal_lm

MESSAGES = [{"role": "user", "content": "what is the capital of france?"}]


@pytest.fixture
def served(live_server, make_adapter, tiny_base_dir):  # type: ignore[no-untyped-def]
    folder = make_adapter("alpha", rank=4, seed=1)
    server = live_server(max_new_tokens_limit=32)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    yield server, client, folder
    client.close()


def reference(base_dir: Path, folder: Path | None, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits = causal_lm(base_dir, folder)(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def test_completion_echo_logprobs_equal_peft(served, tiny_base_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """What lm-evaluation-harness asks (token-id prompt, echo, logprobs=1, max_tokens=1):
    every prompt token but the first and the generated one carry PEFT's log_softmax."""
    server, client, folder = served
    tokenizer = AutoTokenizer.from_pretrained(server.settings.base_model)
    prompt = tokenizer("the quick brown fox jumps")["input_ids"]
    answer = client.completions.create(model="alpha", prompt=prompt, max_tokens=1, echo=True,
                                       logprobs=2, temperature=0)
    choice = answer.choices[0]
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.token_logprobs is not None
    assert logprobs.top_logprobs is not None and logprobs.text_offset is not None
    assert logprobs.tokens is not None and len(logprobs.tokens) == len(prompt) + 1
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    prompt_text = tokenizer.decode(prompt)
    assert choice.text.startswith(prompt_text)
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset == sorted(logprobs.text_offset)
    expected = reference(tiny_base_dir, folder, prompt)
    for position in range(1, len(prompt)):
        got = logprobs.token_logprobs[position]
        assert got == pytest.approx(float(expected[position - 1, prompt[position]]), abs=1e-4)
        assert len(logprobs.top_logprobs[position] or {}) == 2
    # Greedy: the generated token is PEFT's best at the last place, and the best alternative.
    assert logprobs.token_logprobs[-1] == pytest.approx(float(expected[-1].max()), abs=1e-4)
    last_top = logprobs.top_logprobs[-1] or {}
    assert max(last_top.values()) == pytest.approx(logprobs.token_logprobs[-1], abs=1e-6)
    assert answer.usage is not None and answer.usage.prompt_tokens == len(prompt)

    plain = client.completions.create(model="alpha", prompt=prompt, max_tokens=3, logprobs=0,
                                      temperature=0)
    plain_lp = plain.choices[0].logprobs
    assert plain_lp is not None and plain_lp.text_offset is not None
    assert plain_lp.text_offset[0] == len(prompt_text)  # offsets count from the prompt
    assert plain_lp.token_logprobs is not None and len(plain_lp.token_logprobs) == 3
    assert plain_lp.token_logprobs[0] == pytest.approx(logprobs.token_logprobs[-1], abs=1e-5)


def test_chat_logprobs_streamed_equal_whole(served) -> None:  # type: ignore[no-untyped-def]
    _server, client, _ = served
    kwargs: dict[str, Any] = dict(model="alpha", messages=MESSAGES, max_tokens=6, logprobs=True,
                                  top_logprobs=3, temperature=0.9, seed=5,
                                  extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kwargs)
    content = whole.choices[0].logprobs.content
    assert content is not None and len(content) == 6
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    assert all(t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in content)
    assert "".join(t.token for t in content) == whole.choices[0].message.content
    streamed = []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            if choice.logprobs is not None and choice.logprobs.content:
                streamed.extend(choice.logprobs.content)
    assert [(t.token, round(t.logprob, 5)) for t in streamed] == \
        [(t.token, round(t.logprob, 5)) for t in content]


def test_n_choices_use_seed_plus_index_and_count_in_usage(served) -> None:  # type: ignore[no-untyped-def]
    _server, client, _ = served
    common: dict[str, Any] = dict(model="alpha", prompt="the quick brown fox", max_tokens=5,
                                  temperature=1.0, extra_body={"ignore_eos": True})
    many = client.completions.create(n=3, seed=11, **common)
    assert [c.index for c in many.choices] == [0, 1, 2]
    alone = [client.completions.create(seed=11 + j, **common).choices[0].text for j in range(3)]
    assert [c.text for c in many.choices] == alone
    assert many.usage is not None and alone
    single = client.completions.create(seed=11, **common)
    assert single.usage is not None
    assert many.usage.completion_tokens == 15
    assert many.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counts once
    # Two prompts, two choices each: choice index = prompt * n + j.
    two = client.completions.create(n=2, seed=3, **{**common, "prompt": ["a b", "c d"]})
    assert [c.index for c in two.choices] == [0, 1, 2, 3]


def test_logit_bias_and_penalties_reach_the_engine(served) -> None:  # type: ignore[no-untyped-def]
    server, client, _ = served
    tokenizer = AutoTokenizer.from_pretrained(server.settings.base_model)
    forced = tokenizer("zebra", add_special_tokens=False)["input_ids"][0]
    answer = client.completions.create(model="alpha", prompt="hello", max_tokens=4,
                                       temperature=0, logit_bias={str(forced): 100},
                                       extra_body={"ignore_eos": True})
    assert answer.choices[0].text == tokenizer.decode([forced] * 4)
    # A strong frequency penalty against that bias: the token cannot repeat every step.
    walked = client.completions.create(
        model="alpha", prompt="hello", max_tokens=4, temperature=0,
        logit_bias={str(forced): 5}, frequency_penalty=2.0,
        extra_body={"ignore_eos": True, "repetition_penalty": 1.2, "top_k": 5, "min_p": 0.01})
    assert walked.choices[0].text != answer.choices[0].text


def test_predict_returns_the_same_logprobs_as_completions(served) -> None:  # type: ignore[no-untyped-def]
    server, client, _ = served
    prompt = "the quick brown fox"
    native = server.client.post("/v1/predict", json={
        "adapter": "alpha", "inputs": prompt, "raw": True,
        "parameters": {"max_new_tokens": 3, "temperature": 0, "ignore_eos": True,
                       "logprobs": 2, "prompt_logprobs": 1}})
    assert native.status_code == 200, native.text
    output = native.json()["outputs"][0]
    openai_lp = client.completions.create(model="alpha", prompt=prompt, max_tokens=3, echo=True,
                                          logprobs=2, temperature=0,
                                          extra_body={"ignore_eos": True}).choices[0].logprobs
    assert openai_lp is not None and openai_lp.token_logprobs is not None
    prompt_entries = output["prompt_logprobs"]
    assert prompt_entries[0] is None and all(len(e["top"]) == 1 for e in prompt_entries[1:])
    values = [None] + [e["logprob"] for e in prompt_entries[1:]] + \
        [e["logprob"] for e in output["logprobs"]]
    assert values == pytest.approx(openai_lp.token_logprobs, abs=1e-6)
    assert all(len(e["top"]) == 2 for e in output["logprobs"])


def test_each_choice_counts_against_the_tenant_limit(live_server) -> None:  # type: ignore[no-untyped-def]
    """n choices are n requests for the tenant's limits: with max_concurrent=2, n=3 can
    never fit (400 naming the limit), n=2 does."""
    server = live_server(admin_token="admin-secret-0123456789", dev_mode=False)
    created = server.client.post(
        "/admin/tenants", headers={"Authorization": "Bearer admin-secret-0123456789"},
        json={"name": "acme", "policy": {"max_concurrent": 2}})
    assert created.status_code == 201, created.text
    headers = {"Authorization": f"Bearer {created.json()['api_key']}"}
    body = {"model": "base", "prompt": "hi", "max_tokens": 2}
    refused = server.client.post("/v1/completions", headers=headers, json={**body, "n": 3})
    assert refused.status_code == 400 and "max_concurrent=2" in refused.text
    fine = server.client.post("/v1/completions", headers=headers, json={**body, "n": 2})
    assert fine.status_code == 200, fine.text
    assert len(fine.json()["choices"]) == 2


def test_streamed_completion_logprobs_equal_whole(served) -> None:  # type: ignore[no-untyped-def]
    """Chunks carry their tokens' logprobs (the first one the echoed prompt's too), and their
    concatenation is the whole answer's."""
    _server, client, _ = served
    kwargs: dict[str, Any] = dict(model="alpha", prompt="the quick brown fox", max_tokens=4,
                                  echo=True, logprobs=2, temperature=0,
                                  extra_body={"ignore_eos": True})
    whole = client.completions.create(**kwargs).choices[0]
    text, tokens, values, offsets = "", [], [], []
    for chunk in client.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            text += choice.text
            if choice.logprobs is not None:
                tokens += choice.logprobs.tokens or []
                values += choice.logprobs.token_logprobs or []
                offsets += choice.logprobs.text_offset or []
    assert whole.logprobs is not None
    assert text == whole.text
    assert tokens == whole.logprobs.tokens
    assert values == pytest.approx(whole.logprobs.token_logprobs)
    assert offsets == whole.logprobs.text_offset
