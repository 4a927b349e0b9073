"""``profile.json`` of an adapter from a reference dataset, for versions registered without
one (plain PEFT imports, older packages).

The inputs are tokenized exactly as the service tokenizes live requests (classifiers:
``tokenizer(text)``; causal-lm: one user turn through the chat template, ready for the
answer), so the reference and the live windows measure the same thing. One forward pass
of the adapter over the inputs gives each classifier input's predicted label and
confidence (top-class probability, as the service reports it); the label distribution is
the file's labels when it has them, else those predictions. A causal-lm adapter's
confidence reference (mean probability of the expected answer's tokens) needs the answer
column. The document itself comes from :func:`loraswap.training.profile.build_profile`, called in
one place, :func:`compute_profile`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from loraswap.adapters.package import TaskKind
from loraswap.base_model.families import stop_token_ids
from loraswap.jobs.reference_data import ReferenceRows
from loraswap.training.data import ChatExample, TextExample, TokenExample
from loraswap.training.evaluate import evaluate, forward_logits
from loraswap.training.profile import build_profile
from loraswap.training.tasks import (
    IGNORE,
    Encoded,
    TaskModel,
    collate,
    encode_chat,
    encode_text,
    encode_words,
    set_inference,
)

MAX_REFERENCE_TOKENS = 512
"""Tokens kept per reference input when the package records no training ``max_length``."""


@dataclass(frozen=True)
class ComputedProfile:
    """The computed document and where its label distribution came from."""

    document: dict[str, Any]
    labels_from: str | None


def compute_profile(task: TaskKind, task_model: TaskModel, inputs: Sequence[Encoded],
                    labels: list[str] | None, confidences: Sequence[float], pad_id: int,
                    batch_size: int, seed: int, stop_ids: Collection[int]) -> dict[str, Any]:
    """The ``profile.json`` document: the one call of ``build_profile`` for reference data
    (when its arguments change, only this call changes). ``build_profile`` profiles a
    classifier's predicted labels and confidences itself, on the reference inputs, and a
    causal-lm adapter's reference generations (stopping on ``stop_ids``): the reference
    inputs are held out (the adapter never trained on them); ``confidences``
    are kept for causal-lm only (the expected answers' token probability)."""
    return build_profile(task, task_model, inputs, labels, pad_id, batch_size, seed,
                         stop_ids=stop_ids, held_out=inputs,
                         answer_confidences=confidences if task is TaskKind.CAUSAL_LM else ())


def profile_reference(task_model: TaskModel, tokenizer: Any, task: TaskKind,
                      labels: list[str] | None, rows: ReferenceRows, *, max_length: int,
                      batch_size: int, seed: int) -> ComputedProfile:
    """Profile the adapter in ``task_model`` on the reference ``rows``."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
        tokenizer.eos_token_id)
    tokenizer.padding_side = "right"
    stop_ids = stop_token_ids(task_model.model.get_base_model(), tokenizer)
    if task is TaskKind.CAUSAL_LM:
        prompts = [prompt_encoding(tokenizer, text, max_length) for text in rows.texts]
        confidences = answer_confidences(task_model, tokenizer, rows, max_length, batch_size,
                                         pad_id)
        document = compute_profile(task, task_model, prompts, None, confidences, pad_id,
                                   batch_size, seed, stop_ids)
        return ComputedProfile(document, None)
    assert labels is not None  # classifiers always carry labels (manifest rule)
    encoded = classifier_encodings(task, tokenizer, rows.texts, labels, max_length)
    predicted, confidences = predict(task_model, task, encoded, batch_size, pad_id)
    if rows.labels is not None:
        apply_labels(task, encoded, rows.labels, labels)
        source = f"the reference file's column {rows.label_column!r}"
    else:
        apply_predictions(task, encoded, predicted, labels)
        source = "the adapter's predictions on the reference inputs (the file has no labels)"
    document = compute_profile(task, task_model, encoded, labels, confidences, pad_id,
                               batch_size, seed, stop_ids)
    return ComputedProfile(document, source)


def prompt_encoding(tokenizer: Any, text: str, max_length: int) -> Encoded:
    """A prompt as the service tokenizes a text request: one user turn through the chat
    template (ready for the answer), or the raw text when the base has no template."""
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                 add_generation_prompt=True, tokenize=False)
        ids = list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    else:
        ids = list(tokenizer(text)["input_ids"])
    ids = ids[:max_length]
    return Encoded(ids, [IGNORE] * len(ids))


def answer_confidences(task_model: TaskModel, tokenizer: Any, rows: ReferenceRows,
                       max_length: int, batch_size: int, pad_id: int) -> list[float]:
    """Mean probability of each expected answer's tokens (empty without answers or a chat
    template: the confidence reference is then absent)."""
    if rows.labels is None or not getattr(tokenizer, "chat_template", None):
        return []
    chats = [encode_chat(tokenizer, ChatExample([{"role": "user", "content": text},
                                                 {"role": "assistant", "content": answer}]),
                         max_length) for text, answer in zip(rows.texts, rows.labels,
                                                              strict=True)]
    usable = [c for c in chats if any(label != IGNORE for label in c.labels)]  # type: ignore[union-attr]
    if not usable:
        return []
    return evaluate(task_model, TaskKind.CAUSAL_LM, usable, None, batch_size,
                    pad_id).confidences


def classifier_encodings(task: TaskKind, tokenizer: Any, texts: list[Any], labels: list[str],
                         max_length: int) -> list[Encoded]:
    """Inputs tokenized as the service does; every label a placeholder (the first label)
    until :func:`apply_labels` or :func:`apply_predictions` sets it."""
    label_ids = {name: i for i, name in enumerate(labels)}
    if task is TaskKind.SEQ_CLS:
        return [encode_text(tokenizer, TextExample(text, labels[0]), label_ids, max_length)
                for text in texts]
    return [encode_words(tokenizer, TokenExample(words, [labels[0]] * len(words)), label_ids,
                         max_length) for words in texts]


@torch.no_grad()
def predict(task_model: TaskModel, task: TaskKind, encoded: Sequence[Encoded],
            batch_size: int, pad_id: int) -> tuple[list[Any], list[float]]:
    """Each input's predicted class (seq-cls) or word classes (token-cls), and its
    confidence: the top-class probability (token-cls: its mean over the words)."""
    predicted: list[Any] = [None] * len(encoded)
    confidences = [0.0] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    set_inference(task_model.model, True)
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = collate([encoded[i] for i in rows], pad_id)
            probs = forward_logits(task_model, batch).float().softmax(-1)
            for row, index in enumerate(rows):
                if task is TaskKind.SEQ_CLS:
                    top, arg = probs[row].max(-1)
                    predicted[index], confidences[index] = int(arg), float(top)
                    continue
                starts = torch.tensor(encoded[index].word_starts, dtype=torch.long)
                top, arg = probs[row, starts].max(-1)
                predicted[index] = [int(a) for a in arg.tolist()]
                confidences[index] = float(top.mean()) if len(starts) else 1.0
    finally:
        set_inference(task_model.model, False)
    return predicted, confidences


def apply_labels(task: TaskKind, encoded: Sequence[Encoded], given: list[Any],
                 labels: list[str]) -> None:
    """Set each input's label (seq-cls) or word tags (token-cls) from the file."""
    for example, value in zip(encoded, given, strict=True):
        if task is TaskKind.SEQ_CLS:
            example.labels = labels.index(value)
        else:
            example.word_tags = list(value[:len(example.word_starts)])


def apply_predictions(task: TaskKind, encoded: Sequence[Encoded], predicted: list[Any],
                      labels: list[str]) -> None:
    """Set each input's label (seq-cls) or word tags (token-cls) from the predictions."""
    for example, value in zip(encoded, predicted, strict=True):
        if task is TaskKind.SEQ_CLS:
            example.labels = int(value)
        else:
            example.word_tags = [labels[k] for k in value]
