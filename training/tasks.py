"""Per-task tokenization and model assembly (LoRA over the shared base weights).

Classification adapters are transformers' ``<Family>ForSequenceClassification`` /
``<Family>ForTokenClassification`` (Llama, Qwen2, Qwen3, Gemma, ...) over the *same*
decoder as the causal LM, with a fresh ``score`` head saved through PEFT
``modules_to_save``. Text is tokenized exactly as the server does: ``tokenizer(text)`` with
default special tokens and no chat template.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from loraswap.adapters.package import TaskKind
from loraswap.adapters.words import SplitText
from loraswap.base_model.loading import LoadedBaseModel, Quantization
from loraswap.core.errors import ConfigurationError
from loraswap.training.config import TrainConfig
from loraswap.training.data import ChatExample, Example, TextExample, TokenExample

logger = logging.getLogger(__name__)

IGNORE = -100


@dataclass
class Encoded:
    """One tokenized example: ids, per-token or single label, and word starts (token-cls)."""

    input_ids: list[int]
    labels: list[int] | int
    word_starts: list[int] = field(default_factory=list)
    word_tags: list[str] = field(default_factory=list)


@dataclass
class TaskModel:
    """The PEFT model being trained and the plain decoder (for base-model embeddings)."""

    model: Any  # peft.PeftModel
    backbone: Any  # the LlamaModel shared with the base causal LM
    quantized: bool
    bidirectional: bool = False


def bidirectional_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """A 4D boolean mask ``[batch, 1, query, key]``: every query sees every real key.

    transformers uses a 4D mask as given instead of building its causal one. Padded
    queries also see the real keys, so no row is all-masked (which would give NaN).
    """
    keys = attention_mask.bool()[:, None, None, :]
    width = attention_mask.shape[1]
    return keys.expand(attention_mask.shape[0], 1, width, width)


def model_inputs(task_model: TaskModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``input_ids`` and the attention mask the adapter trains with."""
    mask = batch["attention_mask"]
    if task_model.bidirectional:
        mask = bidirectional_mask(mask)
    return {"input_ids": batch["input_ids"], "attention_mask": mask}


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id
    if pad is None:
        raise ConfigurationError("the tokenizer has neither a pad nor an eos token")
    return int(pad)


def encode_text(tokenizer: Any, example: TextExample, label_ids: dict[str, int],
                max_length: int) -> Encoded:
    """``tokenizer(text)`` truncated to ``max_length``; the label index."""
    ids = tokenizer(example.text, truncation=True, max_length=max_length)["input_ids"]
    return Encoded(list(ids), label_ids[example.label])


def _char_words(tokens: Sequence[str]) -> tuple[str, list[int]]:
    """Words joined by spaces, and for every character the index of its word (-1: space)."""
    owner: list[int] = []
    for index, word in enumerate(tokens):
        if index:
            owner.append(-1)
        owner.extend([index] * len(word))
    return " ".join(tokens), owner


def encode_words(tokenizer: Any, example: TokenExample, label_ids: dict[str, int],
                 max_length: int) -> Encoded:
    """Tag every sub-token: the word's tag on its first, ``I-X`` after a ``B-X`` start.

    The words are split into pieces exactly as the service splits raw text (``A-T`` ->
    ``A - T``), so training sees what serving sends. Serving tags each token, so every
    sub-token is trained; word-level evaluation reads each word's first sub-token
    (``word_starts``).
    """
    text, owner = _char_words(example.tokens)
    split = SplitText.of(text)  # what the service does to a request's text
    enc = tokenizer(split.joined, truncation=True, max_length=max_length,
                    return_offsets_mapping=True)
    labels: list[int] = []
    starts: list[int] = []
    previous = -1
    for position, (begin, end) in enumerate(enc["offset_mapping"]):
        first, last = split.original_span(begin, end)
        if first == last:
            labels.append(IGNORE)  # special tokens and bare spaces
            continue
        word = owner[first]
        tag = example.tags[word]
        if word != previous:
            starts.append(position)
        elif tag.startswith("B-"):
            tag = "I-" + tag[2:]  # later sub-tokens and pieces of a word continue it
        labels.append(label_ids[tag])
        previous = word
    tags = [example.tags[owner_word] for owner_word in range(len(starts))]
    return Encoded(list(enc["input_ids"]), labels, starts, tags)


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=generation))


def encode_chat(tokenizer: Any, example: ChatExample, max_length: int) -> Encoded:
    """The conversation rendered with the chat template; loss on assistant turns only."""
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for index, message in enumerate(example.messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, example.messages[:index], generation=True)
        full = _render(tokenizer, example.messages[: index + 1], generation=False)
        if not prompt.startswith(rendered) or not full.startswith(prompt):
            raise ConfigurationError("the chat template does not render conversations "
                                     "incrementally; cannot mask the prompt tokens")
        for text, train in ((prompt[len(rendered):], False), (full[len(prompt):], True)):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids.extend(piece)
            labels.extend(piece if train else [IGNORE] * len(piece))
        rendered = full
    return Encoded(ids[:max_length], labels[:max_length])


def encode_all(task: TaskKind, tokenizer: Any, examples: Sequence[Example],
               labels: list[str] | None, max_length: int) -> list[Encoded]:
    """Encode examples; ones with a label the head does not know are skipped (warned)."""
    label_ids = {name: i for i, name in enumerate(labels or [])}
    out: list[Encoded] = []
    skipped = 0
    for example in examples:
        if isinstance(example, TextExample):
            if example.label not in label_ids:
                skipped += 1
                continue
            out.append(encode_text(tokenizer, example, label_ids, max_length))
        elif isinstance(example, TokenExample):
            if any(t not in label_ids for t in example.tags):
                skipped += 1
                continue
            out.append(encode_words(tokenizer, example, label_ids, max_length))
        else:
            encoded = encode_chat(tokenizer, example, max_length)
            if any(label != IGNORE for label in encoded.labels):  # type: ignore[union-attr]
                out.append(encoded)
            else:
                skipped += 1  # the response was truncated away entirely
    if skipped:
        logger.warning("skipped %d example(s): unknown label or nothing to learn (%s)",
                       skipped, task)
    return out


def collate(batch: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors: input_ids, attention_mask, labels."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    per_token = not isinstance(batch[0].labels, int)
    labels = (torch.full((len(batch), width), IGNORE, dtype=torch.long) if per_token
              else torch.zeros(len(batch), dtype=torch.long))
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        mask[row, :n] = 1
        if isinstance(example.labels, int):
            labels[row] = example.labels
        else:
            labels[row, :n] = torch.tensor(example.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _head_model(loaded: LoadedBaseModel, task: TaskKind, labels: list[str]) -> Any:
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    config = copy.deepcopy(loaded.model.config)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    # Sequence classification pools the last token that is not padding (right-padded).
    config.pad_token_id = _pad_id(loaded.tokenizer)
    config.classifier_dropout = 0.0
    # The base's own family (LlamaFor..., Qwen2For..., GemmaFor...): same decoder, same head.
    head_class = (AutoModelForSequenceClassification if task is TaskKind.SEQ_CLS
                  else AutoModelForTokenClassification)
    with torch.device("meta"):  # the decoder is replaced by the loaded one just below
        model = head_class.from_config(config)
    model.model = loaded.model.model
    score = nn.Linear(config.hidden_size, len(labels), bias=task is TaskKind.TOKEN_CLS)
    nn.init.normal_(score.weight, std=config.initializer_range)
    if score.bias is not None:
        nn.init.zeros_(score.bias)
    model.score = score
    return model


def _cast_to_head(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    # The head trains in float32 while a bf16/nf4 decoder hands it bf16 hidden states.
    return tuple(a.to(torch.float32) if torch.is_tensor(a) else a for a in args)


def build_task_model(cfg: TrainConfig, loaded: LoadedBaseModel,
                     labels: list[str] | None) -> TaskModel:
    """Wrap the loaded base in PEFT LoRA for ``cfg.task`` (QLoRA: k-bit preparation)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    task = cfg.task
    if task is TaskKind.CAUSAL_LM:
        model = loaded.model
    else:
        assert labels is not None
        model = _head_model(loaded, task, labels)
    if cfg.qlora:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    lora = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=list(cfg.lora.targets), bias="none", task_type=task.peft_task_type,
        modules_to_save=None if task is TaskKind.CAUSAL_LM else ["score"],
    )
    peft_model = get_peft_model(model, lora)
    if task is not TaskKind.CAUSAL_LM:
        peft_model.base_model.model.score.register_forward_pre_hook(_cast_to_head)
    # Never call eval(): on an nf4 CPU base it repacks weights and gradients stop (see
    # base_model.loading); evaluation switches dropout off instead (set_inference).
    peft_model.train()
    return TaskModel(peft_model, loaded.model.model, quantized=cfg.qlora,
                     bidirectional=cfg.bidirectional)


def load_task_model(loaded: LoadedBaseModel, task: TaskKind, labels: list[str] | None,
                    folder: Path, *, bidirectional: bool = False) -> TaskModel:
    """A saved adapter over the loaded base, for inference, exactly as PEFT loads it.

    The adapter's own ``adapter_config.json`` decides rank, scaling (``use_rslora``) and
    targets, so a plain PEFT import (trained elsewhere) is applied as its trainer saved it;
    a classifier's head comes from the adapter's ``modules_to_save``.
    """
    from peft import PeftModel

    model = loaded.model if task is TaskKind.CAUSAL_LM else _head_model(
        loaded, task, labels or [])
    peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    if task is not TaskKind.CAUSAL_LM:
        peft_model.base_model.model.score.register_forward_pre_hook(_cast_to_head)
    return TaskModel(peft_model, loaded.model.model,
                     quantized=loaded.info.quantization is Quantization.NF4,
                     bidirectional=bidirectional)


def set_inference(model: nn.Module, inference: bool) -> None:
    """Dropout off (on) without ``eval()``, which would repack nf4 weights on this CPU."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.train(not inference)
