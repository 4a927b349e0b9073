"""The real SmolLM2 base behind a real `loraswap serve` process (fetched during the run)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraswap.adapters.demo import write_random_adapter
from tests.service.processes import ServiceProcess
from tests.utils.env import HUB_SWITCHES, REPO_ROOT, child_env, empty_home

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# name -> (rank, targets, seed, scale of B). Seeded, so each adapter is the same every
# run; each scale is one at which that adapter changes SmolLM2's fp32 greedy answer to at
# least two of the four prompts (measured with PEFT; at 0.05 "support-qv" changed none and
# "retail-mlp" one), while the answers stay text the engine must reproduce token for token.
ADAPTERS: dict[str, tuple[int, tuple[str, ...], int, float]] = {
    "support-qv": (8, ("q_proj", "v_proj"), 11, 0.15),
    "legal-attn": (16, ("q_proj", "k_proj", "v_proj", "o_proj"), 12, 0.05),
    "retail-mlp": (4, ("gate_proj", "up_proj", "down_proj"), 13, 0.15),
    "medical-all": (8, ALL, 14, 0.05),
}
PROMPTS = ["What is the capital of France?", "Name three primary colors.",
           "Write a haiku about the sea.", "Give me one tip for staying healthy."]
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def adapter_dir(real_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real-adapters")
    for name, (rank, targets, seed, scale) in ADAPTERS.items():
        write_random_adapter(real_model_dir, root / name, rank=rank, targets=targets, seed=seed,
                             scale=scale)
    return root


@pytest.fixture(scope="module")
def network_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the server's network guard records every non-loopback attempt."""
    return tmp_path_factory.mktemp("network") / "attempts.log"


@pytest.fixture(scope="module")
def server(real_model_dir: Path, adapter_dir: Path, network_log: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`loraswap serve` as users start it, in fp32 so greedy tokens compare exactly, with
    every non-loopback connection and name lookup refused and logged."""
    state = tmp_path_factory.mktemp("real-state")
    env = {"LORASWAP_BASE_MODEL": str(real_model_dir),
           "LORASWAP_DEV_MODE": "true", "LORASWAP_STORE_URI": (state / "store").as_uri(),
           "LORASWAP_ADAPTER_CACHE_DIR": str(state / "cache"),
           "LORASWAP_ADAPTER_DIR": str(adapter_dir), "LORASWAP_QUANTIZATION": "fp32",
           "LORASWAP_MAX_LORAS": "2", "LORASWAP_MAX_MODEL_LEN": "512", **empty_home(state)}
    # The Hub's offline switches unset and an empty HOME: the service must not need them
    # (the network guard proves it never tries).
    process = ServiceProcess(
        env, state, unset=HUB_SWITCHES,
        launcher=("-m", "tests.utils.patched_serve", "--deny-network", str(network_log), "--"))
    try:
        yield process.start(timeout=300).url
    finally:
        process.stop()


PeftAnswer = Callable[[str | None, str], str]


@pytest.fixture(scope="module")
def peft_alone(real_model_dir: Path, adapter_dir: Path) -> PeftAnswer:
    """PEFT's greedy answer with one adapter (None: the base) for a prompt, in fp32 (the
    reference). The base is loaded once; each adapter is attached, run and unloaded."""
    tokenizer = AutoTokenizer.from_pretrained(real_model_dir)
    holder = [AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32).eval()]

    def answer(adapter: str | None, prompt: str) -> str:
        base = holder[0]
        model = base if adapter is None else PeftModel.from_pretrained(
            base, adapter_dir / adapter).eval()
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                 add_generation_prompt=True, tokenize=False)
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS,
                                 do_sample=False)
        if adapter is not None:
            holder[0] = model.unload()
        return str(tokenizer.decode(out[0, len(ids):], skip_special_tokens=True))

    return answer


def test_readyz_tells_the_truth_and_base_answers(server: str) -> None:
    ready = httpx.get(f"{server}/readyz").json()
    assert ready["model"]["quantization"] == "fp32"
    assert ready["model"]["compute_dtype"] == "float32"
    assert ready["model"]["device"] == "cpu"
    status = httpx.get(f"{server}/admin/status").json()  # dev mode: /admin is open
    assert sorted(status["adapters_available"]) == sorted(ADAPTERS)
    answer = httpx.post(f"{server}/v1/predict", timeout=120,
                        content=b'{"inputs":"What is the capital of France?"}',
                        headers={"content-type": "application/json"}).json()
    assert "Paris" in answer["outputs"][0]["text"], answer


def test_concurrent_requests_over_four_adapters_match_peft_and_change_the_answers(
        server: str, peft_alone: PeftAnswer) -> None:
    """20 simultaneous requests (4 adapters and the base, each on every prompt; 2 slots):
    each equals PEFT's output alone, and every adapter changes SmolLM2's greedy answer to at
    least one prompt, so an engine that dropped or swapped adapters would fail. (One prompt
    is not enough: "What is the capital of France?" stays "The capital of France is
    Paris." under two of the four adapters.)"""
    jobs = [(name, prompt) for prompt in PROMPTS for name in [*ADAPTERS, None]]

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server, timeout=600) as client:
            return await asyncio.gather(*(
                client.post("/v1/predict", json={
                    "adapter": name, "inputs": prompt,
                    "parameters": {"max_new_tokens": NEW_TOKENS}})
                for name, prompt in jobs))

    responses = asyncio.run(send_all())
    answers: dict[tuple[str | None, str], str] = {}
    for (name, prompt), response in zip(jobs, responses, strict=True):
        assert response.status_code == 200, response.text
        answers[name, prompt] = response.json()["outputs"][0]["text"]
        assert answers[name, prompt] == peft_alone(name, prompt), (name, prompt)
    unchanged = [name for name in ADAPTERS
                 if all(answers[name, p] == answers[None, p] for p in PROMPTS)]
    assert unchanged == [], answers


def test_the_service_never_reaches_the_network(server: str, network_log: Path) -> None:
    """With the Hub's offline switches unset and an empty HOME, loading the model, listing
    and serving the adapters and answering (the tests above ran first) made no
    non-loopback connection or name lookup: the guard logged none. (The guard itself is
    checked to log: it refuses a lookup of huggingface.co made from the same launcher in a
    child process.)"""
    answer = httpx.post(f"{server}/v1/predict", timeout=120,
                        json={"adapter": "support-qv", "inputs": PROMPTS[0],
                              "parameters": {"max_new_tokens": 4}})
    assert answer.status_code == 200, answer.text
    attempts = network_log.read_text() if network_log.exists() else ""
    assert attempts == "", attempts
    probe_log = network_log.with_name("probe.log")
    probe = subprocess.run(
        [sys.executable, "-c", GUARD_PROBE, str(probe_log)], env=child_env({}),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert "huggingface.co" in probe_log.read_text()


# Installs the same guard and tries what a stray Hub download would do first.
GUARD_PROBE = """
import socket, sys
from pathlib import Path
from tests.utils.patched_serve import deny_network
deny_network(Path(sys.argv[1]))
try:
    socket.getaddrinfo("huggingface.co", 443)
except OSError:
    pass
else:
    raise SystemExit("lookup was not refused")
"""
