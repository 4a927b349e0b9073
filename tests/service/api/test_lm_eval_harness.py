"""lm-evaluation-harness against a running ``loraswap serve``: its ``local-completions``
model (OpenAI ``/v1/completions`` with token-id prompts, ``echo`` and ``logprobs``) scores
every choice of a multiple-choice task exactly as its own ``hf`` backend does on the same
SmolLM2 folder in fp32, for the base model and for a tenant's adapter (``peft=`` there).

The task is SST-2 (the staged dev split, ``../shared/data/sst2``) as two choices, written as
a local task file at run time; lm-eval, datasets and the model load run with every
non-loopback connection refused, so nothing reaches the Hugging Face Hub.
"""

from __future__ import annotations

import csv
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loraswap.adapters.demo import write_random_adapter
from tests.peft_adapters import upload_parts
from tests.service.processes import ServiceProcess
from tests.utils.env import empty_home
from tests.utils.patched_serve import deny_network
from tests.utils.shared_data import shared_data_dir

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DOCS = 16  # dev sentences; two choices each
TASK = "loraswap_sst2"
TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{sentence}}}}\\nQuestion: Is this sentence positive or negative?\\nAnswer:"
doc_to_target: label
doc_to_choice: ["negative", "positive"]
metric_list:
  - metric: acc
"""
# lm-eval's hf backend and the service, both fp32 on the CPU: the bound.
TOLERANCE = 1e-3
ADMIN_TOKEN = "lm-eval-admin-0123456789abcdef"
TENANT, ADAPTER = "acme", "sentiment"

Scores = dict[tuple[int, int], float]  # (doc_id, choice index) -> log-likelihood


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The task YAML and its JSONL: the first :data:`DOCS` SST-2 dev sentences."""
    folder = tmp_path_factory.mktemp("lm-eval-task")
    sst2_dev = shared_data_dir("sst2") / "sst2" / "dev.tsv"
    with sst2_dev.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[:DOCS]
    data = folder / "sst2.jsonl"
    data.write_text("".join(json.dumps({"sentence": r["sentence"].strip(),
                                        "label": int(r["label"])}) + "\n" for r in rows),
                    encoding="utf-8")
    (folder / f"{TASK}.yaml").write_text(
        TASK_YAML.format(task=TASK, data=data, cache=folder / "datasets-cache"),
        encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def adapter_folder(real_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain PEFT LoRA folder for SmolLM2 (q/v, rank 8) at a scale that moves the
    choices' log-likelihoods far beyond the tolerance (the one of
    test_real_model_server.py that changes greedy answers)."""
    return write_random_adapter(real_model_dir, tmp_path_factory.mktemp("lora") / ADAPTER,
                                rank=8, targets=("q_proj", "v_proj"), seed=11, scale=0.15)


@pytest.fixture(scope="module")
def service(real_model_dir: Path, adapter_folder: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`loraswap serve` in fp32 with an admin token (not dev mode); tenant ``acme`` owns the
    adapter, uploaded as the plain PEFT folder. Yields the URL and the tenant's key."""
    state = tmp_path_factory.mktemp("lm-eval-state")
    env = {"LORASWAP_BASE_MODEL": str(real_model_dir), "LORASWAP_QUANTIZATION": "fp32",
           "LORASWAP_DEVICE": "cpu", "LORASWAP_ADMIN_TOKEN": ADMIN_TOKEN,
           "LORASWAP_STORE_URI": (state / "store").as_uri(),
           "LORASWAP_ADAPTER_CACHE_DIR": str(state / "cache"),
           "LORASWAP_MAX_MODEL_LEN": "512", **empty_home(state)}
    process = ServiceProcess(env, state)
    try:
        url = process.start(timeout=300).url
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        created = httpx.post(f"{url}/admin/tenants", headers=admin, json={"name": TENANT})
        assert created.status_code in (200, 201), created.text
        pushed = httpx.post(f"{url}/admin/adapters/{TENANT}/{ADAPTER}/versions", headers=admin,
                            files=upload_parts(adapter_folder), timeout=120)
        assert pushed.status_code in (200, 201), pushed.text
        yield url, str(created.json()["api_key"])
    finally:
        process.stop()


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """From here to the module's end, every non-loopback connect or name lookup of this
    process (lm-eval, datasets, transformers, peft) is refused and logged; yields the log.
    The socket functions are restored afterwards."""
    log = tmp_path_factory.mktemp("network") / "attempts.log"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("connect", "connect_ex"):
            patch.setattr(socket.socket, name, getattr(socket.socket, name))
        patch.setattr(socket, "getaddrinfo", socket.getaddrinfo)
        deny_network(log)
        yield log


def attempts(log: Path) -> str:
    """What the guard refused so far (empty: nothing tried to leave the machine)."""
    return log.read_text(encoding="utf-8") if log.exists() else ""


def run_lm_eval(task_dir: Path, model: str, model_args: dict[str, Any]) -> Scores:
    """lm-eval's Python API on the local task; each choice's log-likelihood per doc."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(model=model, model_args=model_args, tasks=[TASK],
                              task_manager=TaskManager(include_path=str(task_dir)),
                              log_samples=True, batch_size=4, device="cpu")
    assert results is not None
    scores: Scores = {}
    for sample in results["samples"][TASK]:
        for choice, (loglik, _greedy) in enumerate(sample["filtered_resps"]):
            scores[int(sample["doc_id"]), choice] = float(loglik)
    assert len(scores) == 2 * DOCS
    return scores


def through_service(task_dir: Path, url: str, model: str, tokenizer: Path) -> Scores:
    return run_lm_eval(task_dir, "local-completions", {
        "base_url": f"{url}/v1/completions", "model": model, "tokenizer": str(tokenizer),
        "tokenizer_backend": "huggingface", "num_concurrent": 2, "max_retries": 1})


def through_hf(task_dir: Path, model_dir: Path, peft: Path | None) -> Scores:
    args: dict[str, Any] = {"pretrained": str(model_dir), "dtype": "float32"}
    if peft is not None:
        args["peft"] = str(peft)
    return run_lm_eval(task_dir, "hf", args)


def largest_gap(ours: Scores, theirs: Scores) -> float:
    assert ours.keys() == theirs.keys()
    return max(abs(ours[k] - theirs[k]) for k in ours)


@pytest.fixture(scope="module")
def base_scores(task_dir: Path, real_model_dir: Path, offline: Path) -> Scores:
    """The hf backend's log-likelihoods for the base (the adapter test compares to them)."""
    return through_hf(task_dir, real_model_dir, None)


def test_base_model_log_likelihoods_equal_the_hf_backend(
        service: tuple[str, str], task_dir: Path, real_model_dir: Path, base_scores: Scores,
        offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, key = service
    monkeypatch.setenv("OPENAI_API_KEY", key)  # what local-completions sends as the bearer
    started = time.monotonic()
    served = through_service(task_dir, url, "base", real_model_dir)
    gap = largest_gap(served, base_scores)
    print(f"base: {len(served)} log-likelihoods, max |diff| {gap:.2e}, "
          f"service {time.monotonic() - started:.1f} s")
    assert gap <= TOLERANCE, (served, base_scores)
    assert attempts(offline) == ""


def test_adapter_log_likelihoods_equal_the_hf_backend_with_peft(
        service: tuple[str, str], task_dir: Path, real_model_dir: Path, adapter_folder: Path,
        base_scores: Scores, offline: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tenant's adapter through the service equals ``hf`` with ``peft=`` its folder, and
    differs from the base on every choice: a service that dropped the adapter fails."""
    url, key = service
    monkeypatch.setenv("OPENAI_API_KEY", key)
    served = through_service(task_dir, url, f"{TENANT}/{ADAPTER}", real_model_dir)
    reference = through_hf(task_dir, real_model_dir, adapter_folder)
    gap = largest_gap(served, reference)
    moved = sorted(abs(reference[k] - base_scores[k]) for k in reference)
    print(f"adapter: {len(served)} log-likelihoods, max |diff| {gap:.2e}; adapter vs base: "
          f"min {moved[0]:.3f}, max {moved[-1]:.3f}")
    assert gap <= TOLERANCE, (served, reference)
    assert moved[0] > 10 * TOLERANCE, moved
    assert attempts(offline) == ""
