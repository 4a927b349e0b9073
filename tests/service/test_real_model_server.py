"""The real SmolLM2 base behind a real `loraswap serve` process (fetched during the run)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from adapters.demo import write_random_adapter
from tests.service.conftest import free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# name -> (rank, targets, seed)
ADAPTERS: dict[str, tuple[int, tuple[str, ...], int]] = {
    "support-qv": (8, ("q_proj", "v_proj"), 11),
    "legal-attn": (16, ("q_proj", "k_proj", "v_proj", "o_proj"), 12),
    "retail-mlp": (4, ("gate_proj", "up_proj", "down_proj"), 13),
    "medical-all": (8, ALL, 14),
}
PROMPTS = ["What is the capital of France?", "Name three primary colors.",
           "Write a haiku about the sea.", "Give me one tip for staying healthy."]
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def adapter_dir(real_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real-adapters")
    for name, (rank, targets, seed) in ADAPTERS.items():
        write_random_adapter(real_model_dir, root / name, rank=rank, targets=targets, seed=seed,
                             scale=0.05)
    return root


@pytest.fixture(scope="module")
def server(real_model_dir: Path, adapter_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`loraswap serve` as users start it, in fp32 so greedy tokens compare exactly."""
    port = free_port()
    state = tmp_path_factory.mktemp("real-state")
    env = {**os.environ, "LORASWAP_BASE_MODEL": str(real_model_dir),
           "LORASWAP_DEV_MODE": "true", "LORASWAP_STORE_URI": (state / "store").as_uri(),
           "LORASWAP_ADAPTER_CACHE_DIR": str(state / "cache"),
           "LORASWAP_ADAPTER_DIR": str(adapter_dir), "LORASWAP_QUANTIZATION": "fp32",
           "LORASWAP_MAX_LORAS": "2", "LORASWAP_MAX_MODEL_LEN": "512"}
    process = subprocess.Popen(
        [sys.executable, "-m", "loraswap.cli", "serve", "--port", str(port)], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("real-model server did not become ready in 180 s")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def peft_alone(model_dir: Path, adapter: Path, prompt: str) -> str:
    """PEFT's greedy answer with this one adapter, in fp32 (the reference)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter).eval()
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             add_generation_prompt=True, tokenize=False)
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False)
    return str(tokenizer.decode(out[0, len(ids):], skip_special_tokens=True))


def test_readyz_tells_the_truth_and_base_answers(server: str) -> None:
    ready = httpx.get(f"{server}/readyz").json()
    assert ready["model"]["quantization"] == "fp32"
    assert ready["model"]["compute_dtype"] == "float32"
    assert ready["model"]["device"] == "cpu"
    assert sorted(ready["adapters_available"]) == sorted(ADAPTERS)
    answer = httpx.post(f"{server}/v1/predict", timeout=120,
                        content=b'{"inputs":"What is the capital of France?"}').json()
    assert "Paris" in answer["outputs"][0]["text"], answer


def test_eight_concurrent_requests_over_four_adapters_match_peft(
        server: str, real_model_dir: Path, adapter_dir: Path) -> None:
    """Each of 8 simultaneous requests (4 adapters, 2 slots) equals PEFT's output alone."""
    jobs = [(name, PROMPTS[i % len(PROMPTS)]) for i, name in enumerate(list(ADAPTERS) * 2)]

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server, timeout=300) as client:
            return await asyncio.gather(*(
                client.post("/v1/predict", json={
                    "adapter": name, "inputs": prompt,
                    "parameters": {"max_new_tokens": NEW_TOKENS}})
                for name, prompt in jobs))

    responses = asyncio.run(send_all())
    outputs = []
    for (name, prompt), response in zip(jobs, responses, strict=True):
        assert response.status_code == 200, response.text
        text = response.json()["outputs"][0]["text"]
        assert text == peft_alone(real_model_dir, adapter_dir / name, prompt), name
        outputs.append(text)
    assert len(set(outputs)) > 1
