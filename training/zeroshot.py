"""Zero-shot baseline for classification: prompt the instruct base, score each label.

For every text the chat-templated prompt lists the label words; the prediction is the label
whose words get the highest total log-probability as the assistant's answer. This is the
base model's own ability, with no adapter and no training, for the quality table.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from loraswap.training.data import TextExample
from loraswap.training.metrics import classification_metrics


def _rows(tokenizer: Any, example: TextExample, instruction: str,
          words: list[str]) -> list[tuple[list[int], int]]:
    content = (f"{instruction}\n\nText: {example.text}\n"
               f"Answer with one word: {', '.join(words)}.")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                           tokenize=False, add_generation_prompt=True)
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    rows = []
    for word in words:
        answer = list(tokenizer(word, add_special_tokens=False)["input_ids"])
        rows.append((prompt_ids + answer, len(prompt_ids)))
    return rows


@torch.no_grad()
def label_scores(model: Any, tokenizer: Any, rows: list[tuple[list[int], int]],
                 pad_id: int) -> list[float]:
    """Sum of log-probabilities of each row's tokens after its prompt length."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (row, _) in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    logp = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
    token_logp = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    scores = []
    for i, (row, start) in enumerate(rows):
        scores.append(float(token_logp[i, start - 1:len(row) - 1].sum()))
    return scores


def zero_shot_metrics(model: Any, tokenizer: Any, examples: Sequence[TextExample],
                      verbalizers: dict[str, str], instruction: str,
                      limit: int | None = None, seed: int = 0,
                      examples_per_batch: int = 8) -> dict[str, float]:
    """Accuracy and macro-F1 of label-likelihood prompting (a seeded sample if ``limit``)."""
    data = list(examples)
    if limit is not None and len(data) > limit:
        data = random.Random(seed).sample(data, limit)
    keys = list(verbalizers)
    words = [verbalizers[k] for k in keys]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    true: list[int] = []
    pred: list[int] = []
    for start in range(0, len(data), examples_per_batch):
        chunk = [e for e in data[start:start + examples_per_batch] if e.label in verbalizers]
        if not chunk:
            continue
        rows = [row for e in chunk for row in _rows(tokenizer, e, instruction, words)]
        scores = label_scores(model, tokenizer, rows, pad_id)
        for i, example in enumerate(chunk):
            own = scores[i * len(keys):(i + 1) * len(keys)]
            pred.append(max(range(len(keys)), key=own.__getitem__))
            true.append(keys.index(example.label))
    metrics = classification_metrics(true, pred)
    metrics["examples"] = float(len(true))
    return metrics
