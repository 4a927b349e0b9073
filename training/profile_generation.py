"""Reference generations of a causal-lm adapter, for the output-length and token
log-probability drift signals (``profile.json`` section ``generation``).

The service measures every generation it answers (``service/engine/sampling.py``,
``chosen_logprobs``): the number of generated tokens, stop token included, and the mean
over them of the natural log of each token's probability under the model's own
distribution (``log_softmax`` of the raw logits, temperature 1, no top-p), whatever the
request's sampling parameters. This module measures the same two figures on a bounded
sample of training prompts with the trained adapter, decoding each prompt twice:

* ``greedy``: argmax at every step (the native API's default, temperature 0);
* ``sampled``: a draw from the model's own distribution (temperature 1, top_p 1, the
  OpenAI API's default), with a seeded generator so the profile is reproducible.

Both are needed because they differ by construction: greedy takes each step's most
probable token, so its log-probabilities are the highest the model gives, while a
temperature-1 draw averages minus the entropy; lengths differ too. A greedy-only reference
would report every sampled request as drift. The service compares each live generation
with the reference of its own decoding (``service/drift/reference.py``).

Generation stops at the same stop tokens as the engine
(:func:`loraswap.base_model.families.stop_token_ids`) or after ``max_new_tokens``; the service
compares only the first ``max_new_tokens`` tokens of a live generation.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Any

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

from loraswap.training.tasks import TaskModel, set_inference

GREEDY = "greedy"
SAMPLED = "sampled"
# Bounds of the reference generations: 2 x 64 prompts of at most 64 new tokens each.
REFERENCE_PROMPTS = 64
REFERENCE_NEW_TOKENS = 64
# Prompts decoded together (sorted by length, so little padding): on a 2-core CPU with
# SmolLM2-135M, 64 prompts in batches of 16 took 84 s for both decodings, in one batch 50 s.
GENERATION_BATCH = 32


# transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name warns, then goes).
CACHE_FIELD = ("cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__
               else "past_key_values")


def _checkpointing(base: Any, action: str) -> Any:
    """``is``/``enable``/``disable`` of activation (formerly gradient) checkpointing."""
    names = {"is": ("is_activation_checkpointing", "is_gradient_checkpointing"),
             "enable": ("activation_checkpointing_enable", "gradient_checkpointing_enable"),
             "disable": ("activation_checkpointing_disable", "gradient_checkpointing_disable")}
    new, old = names[action]
    return getattr(base, new) if hasattr(base, new) else getattr(base, old)


def _no_checkpointing(task_model: TaskModel) -> Any:
    """The transformers model under the PEFT wrapper with activation checkpointing off, if
    it was on (it turns the KV cache off in training mode, and the model is never put in
    ``eval()``); None when it was off."""
    base = task_model.model.get_base_model()
    if _checkpointing(base, "is"):
        _checkpointing(base, "disable")()
        return base
    return None


@torch.no_grad()
def generate(task_model: TaskModel, prompts: Sequence[list[int]], pad_id: int,
             stop_ids: Collection[int], *, greedy: bool, max_new_tokens: int, seed: int,
             batch_size: int = GENERATION_BATCH) -> list[tuple[int, float]]:
    """``(output tokens, mean natural-log probability)`` of each prompt's generation, in
    the order of ``prompts`` (decoded in batches of similar length)."""
    generator = torch.Generator().manual_seed(seed)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    stops = torch.tensor(sorted(stop_ids), dtype=torch.long)
    checkpointed = _no_checkpointing(task_model)
    set_inference(task_model.model, True)
    try:
        out: dict[int, tuple[int, float]] = {}
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            results = _generate_batch(task_model.model, [prompts[i] for i in batch], pad_id,
                                      stops, greedy, max_new_tokens, generator)
            out.update(zip(batch, results, strict=True))
        return [out[i] for i in range(len(prompts))]
    finally:
        set_inference(task_model.model, False)
        if checkpointed is not None:
            _checkpointing(checkpointed, "enable")()


def _generate_batch(model: Any, prompts: Sequence[list[int]], pad_id: int,
                    stops: torch.Tensor, greedy: bool, max_new_tokens: int,
                    generator: torch.Generator) -> list[tuple[int, float]]:
    """Left-padded prompts, then one token per step for every row through the KV cache."""
    rows, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # Logits of the last position only: all of them would be [rows, width, vocab].
    output = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                   logits_to_keep=1)
    following = positions[:, -1] + 1
    total = torch.zeros(rows, dtype=torch.float64)
    count = torch.zeros(rows, dtype=torch.long)
    done = torch.zeros(rows, dtype=torch.bool)
    for step in range(max_new_tokens):
        logp = output.logits[:, -1].float().log_softmax(-1)
        token = (logp.argmax(-1) if greedy else
                 torch.multinomial(logp.exp(), 1, generator=generator)[:, 0])
        live = ~done
        total += torch.where(live, logp.gather(1, token[:, None])[:, 0].double(), 0.0)
        count += live.long()
        done |= torch.isin(token, stops)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=torch.long)], dim=1)
        output = model(input_ids=torch.where(done, pad_id, token)[:, None], attention_mask=mask,
                       position_ids=following[:, None], use_cache=True,
                       **{CACHE_FIELD: getattr(output, CACHE_FIELD)})
        following = following + 1
    return [(int(n), float(s) / int(n)) for s, n in zip(total, count, strict=True)]


def generation_profile(task_model: TaskModel, prompts: Sequence[list[int]], pad_id: int,
                       stop_ids: Collection[int], seed: int, distribution: Any,
                       sample_size: int = REFERENCE_PROMPTS,
                       max_new_tokens: int = REFERENCE_NEW_TOKENS) -> dict[str, Any]:
    """The ``generation`` section: per decoding, histograms of output length and mean
    token log-probability on shared bins (``distribution`` is :func:`profile.distribution`)."""
    picked = random.Random(seed).sample(list(prompts), min(sample_size, len(prompts)))
    results = {name: generate(task_model, picked, pad_id, stop_ids, greedy=name == GREEDY,
                              max_new_tokens=max_new_tokens, seed=seed)
               for name in (GREEDY, SAMPLED)}
    logprobs = [value for result in results.values() for _, value in result]
    low, high = min(logprobs, default=-1.0), max(logprobs, default=0.0)
    decodings: dict[str, Any] = {}
    for name, result in results.items():
        decodings[name] = {
            # Half-integer edges: no whole number of tokens sits on a bin edge.
            "output_length_tokens": distribution([float(n) for n, _ in result], bins=20,
                                                 low=0.5, high=max_new_tokens + 0.5),
            "token_logprob": distribution([v for _, v in result], bins=20, low=low,
                                          high=high),
        }
    decodings[SAMPLED].update({"temperature": 1.0, "top_p": 1.0, "seed": seed})
    return {
        "prompts": len(picked),
        "max_new_tokens": max_new_tokens,
        "stop_token_ids": sorted(int(i) for i in stop_ids),
        "logprob": ("mean over the generated tokens (stop token included) of the natural "
                    "log of each token's probability under the model's own distribution "
                    "(temperature 1, no top-p)"),
        "decodings": decodings,
    }
