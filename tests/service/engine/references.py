"""The references the engine is checked against: transformers + PEFT in fp32, any family.

Shared by the engine-vs-PEFT, classification and model-family tests. Models are built with
transformers' Auto classes from the base folder's ``config.json``, so the same helpers
check Llama, Mistral, Qwen2, Qwen3 and Gemma bases.
"""

from __future__ import annotations

import asyncio
import json
from functools import cache
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from loraswap.adapters.lora_format import read_lora_adapter
from loraswap.adapters.package import AttentionMode, TaskKind, read_manifest
from loraswap.core.identity import AdapterVersionRef
from loraswap.service.engine.classify import (
    ClassificationRequest,
    ClassificationResult,
    ClassificationStream,
)
from loraswap.service.engine.engine import EngineConfig, LoraEngine
from loraswap.service.engine.observer import EngineObserver, NullObserver
from loraswap.service.engine.requests import GenerationRequest
from loraswap.service.engine.sampling import SamplingParams

PAD = 2  # the tiny bases' config.pad_token_id


def causal_lm(base_dir: Path, adapter_dir: Path | None = None) -> Any:
    """The base causal LM in fp32 (eval), wrapped by PEFT with ``adapter_dir`` if given."""
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir).eval()
    return model


def peft_greedy(base_dir: Path, adapter_dir: Path | None, prompt: list[int],
                new_tokens: int) -> list[int]:
    """Greedy tokens from PEFT with the adapter alone (the reference)."""
    model = causal_lm(base_dir, adapter_dir)
    # No EOS, so greedy runs the full length (min_new_tokens would mask EOS out instead,
    # which is not greedy decoding).
    model.generation_config.eos_token_id = None
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=PAD)
    return list(out[0, len(prompt):].tolist())


def peft_last_logits(base_dir: Path, adapter_dir: Path | None, prompt: list[int],
                     ) -> torch.Tensor:
    """fp32 logits of the prompt's last token, from PEFT with the adapter alone."""
    with torch.inference_mode():
        logits: torch.Tensor = causal_lm(base_dir, adapter_dir)(torch.tensor([prompt])).logits
    return logits[0, -1].float()


def make_engine(base_dir: Path, observer: EngineObserver | None = None,
                **overrides: int) -> LoraEngine:
    """An engine on the fp32 base in ``base_dir`` (small tables unless overridden)."""
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    config = EngineConfig(**{"max_loras": 4, "max_lora_rank": 16, "max_batch_size": 8,
                             "max_model_len": 128, **overrides})
    return LoraEngine(model, AutoTokenizer.from_pretrained(base_dir), config,
                      observer or NullObserver())


async def engine_greedy(engine: LoraEngine, name: str | None, folder: Path | None,
                        prompt: list[int], new_tokens: int, rid: str) -> list[int]:
    """Greedy tokens from the (started) engine for one request, EOS ignored."""
    key = weights = None
    if name is not None and folder is not None:
        key = AdapterVersionRef.parse(f"{name}@1")
        weights = await engine.adapter_weights(key, lambda: read_lora_adapter(folder))
    request = GenerationRequest(
        request_id=rid, prompt_ids=prompt, adapter=key, adapter_weights=weights,
        params=SamplingParams(max_new_tokens=new_tokens, ignore_eos=True),
    )
    result = await engine.submit(request).collect()
    assert result.completion_tokens == new_tokens
    return list(result.token_ids)


# --- classification -----------------------------------------------------------------------

def task_of(folder: Path) -> TaskKind:
    """The task in an adapter package's manifest."""
    return TaskKind(json.loads((folder / "loraswap.json").read_text())["task"])


def attention_of(folder: Path) -> AttentionMode:
    """The attention mode in an adapter package's manifest."""
    return read_manifest(folder).attention


@cache
def peft_classifier(base_dir: Path, folder: Path, lora: bool = True) -> torch.nn.Module:
    """transformers' classification model of the base's family with the PEFT adapter, fp32.

    ``lora=False`` zeroes the LoRA factors but keeps the adapter's head.
    """
    manifest = json.loads((folder / "loraswap.json").read_text())
    model_class = (AutoModelForSequenceClassification if manifest["task"] == "seq-cls"
                   else AutoModelForTokenClassification)
    model = model_class.from_pretrained(base_dir, num_labels=len(manifest["labels"]),
                                        dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(model, folder).eval()
    if not lora:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.zero_()
    return model


def peft_probs(base_dir: Path, folder: Path, prompt: list[int], lora: bool = True,
               ) -> torch.Tensor:
    """PEFT's softmax: [num_labels] for seq-cls, [tokens, num_labels] for token-cls."""
    model = peft_classifier(base_dir, folder, lora)
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)
    if attention_of(folder) is AttentionMode.BIDIRECTIONAL:
        # transformers uses a 4D mask as given: every token sees every token.
        mask = mask.bool()[:, None, None, :].expand(1, 1, len(prompt), len(prompt))
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits[0]
    return torch.softmax(logits.float(), dim=-1)


async def submit_classify(engine: LoraEngine, name: str, folder: Path, prompt: list[int],
                          rid: str) -> ClassificationStream:
    """Queue a classification request for the adapter package in ``folder``."""
    key = AdapterVersionRef.parse(f"{name}@1")
    weights = await engine.adapter_weights(key, lambda: read_lora_adapter(folder, name))
    return engine.classify(ClassificationRequest(
        request_id=rid, prompt_ids=prompt, task=task_of(folder), adapter=key,
        adapter_weights=weights, fairness_key=name, attention=attention_of(folder)))


async def results_of(streams: list[ClassificationStream]) -> list[ClassificationResult]:
    """The results of several classification streams, in order."""
    return list(await asyncio.gather(*(s.result() for s in streams)))


def assert_matches_peft(base_dir: Path, folder: Path, prompt: list[int],
                        result: ClassificationResult) -> None:
    """The engine's probabilities equal PEFT's for this adapter and prompt."""
    expected = peft_probs(base_dir, folder, prompt)
    got = torch.tensor(result.probs)
    if task_of(folder) is TaskKind.SEQ_CLS:
        got = got[0]
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)
    assert result.prompt_tokens == len(prompt)
