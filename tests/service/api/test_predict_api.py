"""The native predict API over a real server: outputs, errors, streaming, limits."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import httpx
import torch
from peft import PeftModel
from transformers import AutoTokenizer, LlamaForCausalLM

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def peft_text(base_dir: Path, adapter_dir: Path | None, prompt: str, new_tokens: int,
              *, raw: bool = False) -> str:
    """Greedy text from PEFT for ``prompt`` (chat-templated like the service does unless
    ``raw``; ``raw`` runs the full length, as ``ignore_eos`` does)."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir).eval()
    rendered = prompt if raw else tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    if raw:
        model.generation_config.eos_token_id = None
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return str(tokenizer.decode(out[0, len(ids):], skip_special_tokens=True))


def wait_for_metric(client: httpx.Client, series: str, timeout: float = 60.0) -> None:
    """Poll /metrics until ``series`` appears (metrics are recorded as responses finish);
    ``timeout`` only ends a hang on an overloaded machine."""
    for _ in range(int(timeout / 0.05)):
        if series in client.get("/metrics").text:
            return
        time.sleep(0.05)
    text = client.get("/metrics").text
    raise AssertionError(f"{series!r} never appeared in /metrics:\n{text[:3000]}")


def sse_events(text: str) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_concurrent_requests_get_their_own_adapter_output(live_server, make_adapter,
                                                          tiny_base_dir) -> None:  # type: ignore[no-untyped-def]
    """9 requests at once: the 4 adapters and the base on one prompt, the 4 adapters on
    other prompts. Each equals PEFT's output for its adapter alone, and on the shared
    prompt all five differ, so an engine that dropped or mixed up adapters fails."""
    specs = {"a1": (2, ("q_proj", "v_proj")), "a2": (8, ALL), "a3": (4, ("o_proj",)),
             "a4": (16, ("gate_proj", "down_proj"))}
    folders = {n: make_adapter(n, rank=r, targets=t, seed=i)
               for i, (n, (r, t)) in enumerate(specs.items())}
    server = live_server(max_loras=2)
    prompts = ["what is the capital of france?", "name three primary colors",
               "write a haiku about the sea", "the quick brown fox"]
    shared: list[tuple[str | None, str]] = [(name, prompts[0]) for name in [*specs, None]]
    jobs = shared + [(name, prompts[1 + i % 3]) for i, name in enumerate(specs)]

    async def call_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(
                client.post("/v1/predict", json={
                    "adapter": name, "inputs": prompt,
                    "parameters": {"max_new_tokens": 12, "ignore_eos": False}})
                for name, prompt in jobs))

    responses = asyncio.run(call_all())
    for (name, prompt), response in zip(jobs, responses, strict=True):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["adapter"] == name
        expected = peft_text(tiny_base_dir, folders[name] if name else None, prompt, 12)
        assert body["outputs"][0]["text"] == expected, name
    texts = [r.json()["outputs"][0]["text"] for r in responses[:len(shared)]]
    assert len(set(texts)) == len(shared), texts  # every adapter changes the answer


def test_errors_name_the_problem(live_server, make_adapter, tmp_path) -> None:  # type: ignore[no-untyped-def]
    make_adapter("big", rank=32, targets=("q_proj",))
    pickled = make_adapter("pickled")
    (pickled / "adapter_model.safetensors").rename(pickled / "adapter_model.bin")
    server = live_server(max_input_tokens=20, max_lora_rank=16)
    post = server.client.post

    missing = post("/v1/predict", json={"adapter": "nope", "inputs": "hi"})
    assert missing.status_code == 404
    assert missing.json()["error"] == {"code": "adapter_not_found",
                                       "message": "adapter 'nope' not found"}

    bad = post("/v1/predict", json={"inputs": "hi", "parameters": {"temperature": -1}})
    assert bad.status_code == 422
    assert bad.json()["error"]["details"][0]["loc"] == ["body", "parameters", "temperature"]

    too_long = post("/v1/predict", json={"inputs": "the quick brown fox " * 20, "raw": True})
    assert too_long.status_code == 413
    assert "limit of 20" in too_long.json()["error"]["message"]

    traversal = post("/v1/predict", json={"adapter": "../etc", "inputs": "hi"})
    assert traversal.status_code == 400
    assert "invalid" in traversal.json()["error"]["message"]

    rank = post("/v1/predict", json={"adapter": "big", "inputs": "hi"})
    assert rank.status_code == 422
    assert "rank 32 exceeds the maximum 16" in rank.json()["error"]["message"]

    pickle = post("/v1/predict", json={"adapter": "pickled", "inputs": "hi"})
    assert pickle.status_code == 422
    assert "pickle" in pickle.json()["error"]["message"]

    not_json = post("/v1/predict", content=b"{not json",
                    headers={"content-type": "application/json"})
    assert not_json.status_code == 422


def test_streaming_matches_the_whole_answer(live_server, make_adapter) -> None:  # type: ignore[no-untyped-def]
    make_adapter("s1", rank=4)
    server = live_server()
    request = {"adapter": "s1", "inputs": "name three primary colors",
               "parameters": {"max_new_tokens": 10, "ignore_eos": True}}
    whole = server.client.post("/v1/predict", json=request).json()
    streamed = server.client.post("/v1/predict", json={**request, "stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse_events(streamed.text)
    tokens = [e for kind, e in events if kind == "token"]
    assert len(tokens) == 10
    assert "".join(t["text"] for t in tokens) == whole["outputs"][0]["text"]
    kind, done = events[-1]
    assert kind == "done"
    assert done["outputs"] == whole["outputs"]
    assert done["usage"] == whole["usage"]
    assert done["usage"]["completion_tokens"] == 10


def test_sampling_parameters_are_per_request(live_server) -> None:  # type: ignore[no-untyped-def]
    server = live_server()

    def run(**params: object) -> dict:  # type: ignore[type-arg]
        body = {"inputs": "write a haiku", "parameters": {"max_new_tokens": 16, **params}}
        response = server.client.post("/v1/predict", json=body)
        assert response.status_code == 200, response.text
        return response.json()["outputs"][0]  # type: ignore[no-any-return]

    seeded = [run(temperature=1.0, seed=7, ignore_eos=True) for _ in range(2)]
    assert seeded[0] == seeded[1]
    others = {run(temperature=1.0, seed=s, ignore_eos=True)["text"] for s in range(5)}
    assert len(others) > 1
    greedy = run(ignore_eos=True)
    words = greedy["text"].split()
    assert len(words) > 1, greedy  # guard: there is a second word to stop at
    stop_word = words[1]
    stopped = run(ignore_eos=True, stop=[stop_word])
    assert stopped["finish_reason"] == "stop"
    assert stop_word not in stopped["text"]
    assert greedy["text"].startswith(stopped["text"])
    # Cut exactly before the stop string's first occurrence in the greedy text.
    assert stopped["text"] == greedy["text"][:greedy["text"].index(stop_word)]
    short = run(max_new_tokens=3, ignore_eos=True)
    assert short == {"text": short["text"], "tokens": 3, "finish_reason": "length"}


def test_batch_inputs_and_chat_messages(live_server) -> None:  # type: ignore[no-untyped-def]
    server = live_server()
    batch = server.client.post("/v1/predict", json={
        "inputs": ["the quick brown fox", "red yellow and blue"], "raw": True,
        "parameters": {"max_new_tokens": 4, "ignore_eos": True}}).json()
    assert [o["tokens"] for o in batch["outputs"]] == [4, 4]
    single = server.client.post("/v1/predict", json={
        "inputs": "red yellow and blue", "raw": True,
        "parameters": {"max_new_tokens": 4, "ignore_eos": True}}).json()
    assert batch["outputs"][1] == single["outputs"][0]
    chat = server.client.post("/v1/predict", json={
        "inputs": [{"role": "user", "content": "what is the capital of france?"}],
        "parameters": {"max_new_tokens": 4, "ignore_eos": True}}).json()
    templated = server.client.post("/v1/predict", json={
        "inputs": "what is the capital of france?",
        "parameters": {"max_new_tokens": 4, "ignore_eos": True}}).json()
    assert chat["outputs"] == templated["outputs"]
    assert chat["usage"]["prompt_tokens"] > single["usage"]["prompt_tokens"]


def test_full_queue_answers_429_with_retry_after(live_server) -> None:  # type: ignore[no-untyped-def]
    server = live_server(max_batch_size=1, max_queue=1)
    body = {"inputs": "hello", "parameters": {"max_new_tokens": 200, "ignore_eos": True}}

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/predict", json=body)
                                          for _ in range(6)))

    statuses = [r.status_code for r in asyncio.run(flood())]
    assert 200 in statuses
    refused = [r for r in asyncio.run(flood()) if r.status_code == 429]
    assert refused, statuses
    assert refused[0].headers["retry-after"] == "1"
    assert "queue is full" in refused[0].json()["error"]["message"]


def test_disconnect_cancels_generation(live_server) -> None:  # type: ignore[no-untyped-def]
    server = live_server(max_model_len=4096)
    body = {"inputs": "hello", "stream": True,
            "parameters": {"max_new_tokens": 1000, "ignore_eos": True}}
    with server.client.stream("POST", "/v1/predict", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data:"):
                break
    wait_for_metric(server.client,
                    'loraswap_generations_finished_total{adapter="base",reason="cancelled"} 1.0')
    ready = server.client.get("/admin/status").json()
    assert ready["engine"]["running"] == 0


def test_readyz_and_metrics_say_what_is_in_effect(live_server, make_adapter) -> None:  # type: ignore[no-untyped-def]
    make_adapter("m1")
    server = live_server()
    ready = server.client.get("/readyz").json()
    assert ready["status"] == "ready"
    assert ready["model"]["quantization"] == "fp32"
    assert ready["model"]["compute_dtype"] == "float32"
    assert ready["model"]["device"] == "cpu"
    assert server.client.get("/admin/status").json()["adapters_available"] == ["m1"]
    assert server.client.get("/healthz").json() == {"status": "ok"}
    server.client.post("/v1/predict", json={"adapter": "m1", "inputs": "hi",
                                            "parameters": {"max_new_tokens": 2}})
    status = server.client.get("/admin/status").json()
    assert status["engine"]["adapters_in_slots"][0].startswith("m1@")
    for series in ('loraswap_requests_total{adapter="m1",route="/v1/predict",status="200"} 1.0',
                   'loraswap_adapter_loads_total{adapter="m1",tier="slot"} 1.0',
                   'loraswap_adapter_lookups_total{result="miss",tier="host"} 1.0',
                   "loraswap_time_to_first_token_seconds_count",
                   "loraswap_request_duration_seconds_bucket", "loraswap_queue_depth"):
        wait_for_metric(server.client, series)


def test_adapter_replaced_on_disk_is_served_fresh(  # type: ignore[no-untyped-def]
        live_server, make_adapter, tmp_path, tiny_base_dir) -> None:
    folder = make_adapter("swap", rank=4, seed=1)
    replacement = make_adapter("other", rank=8, targets=ALL, seed=9, root=tmp_path / "spare")
    server = live_server()
    body = {"adapter": "swap", "inputs": "the quick brown fox", "raw": True,
            "parameters": {"max_new_tokens": 8, "ignore_eos": True}}
    before = server.client.post("/v1/predict", json=body).json()["outputs"][0]["text"]
    original = peft_text(tiny_base_dir, folder, "the quick brown fox", 8, raw=True)
    assert before == original
    shutil.rmtree(folder)
    shutil.copytree(replacement, folder)
    after = server.client.post("/v1/predict", json=body).json()["outputs"][0]["text"]
    assert after == peft_text(tiny_base_dir, folder, "the quick brown fox", 8, raw=True)
    assert after != original  # guard: the two adapters answer differently
