"""Classification with ``seq-cls`` and ``token-cls`` adapters on the resident base model.

A classification adapter is LoRA factors, loaded into the same slot table as generation
adapters, plus a small head (``score``: ``[num_labels, hidden]``, bias optional) that is
kept here, per slot, on the model's device. A classification request is prompt-only: the
scheduler admits it like any request (same queue, fairness, limits and cancellation),
and it finishes in the step that admits it. That step runs every admitted classification
prompt through one forward pass (:meth:`LlamaRunner.encode`: the prefill path with each
prompt's LoRA slot, no KV cache rows), then the final norm, then each prompt's head, as
transformers' ``LlamaForSequenceClassification`` / ``LlamaForTokenClassification`` do:

* seq-cls reads the hidden state of one token: the rightmost token that is not the
  model's pad token (the last token of an un-padded input), exactly transformers' pooling;
* token-cls applies the head (with its bias) to every token.

An adapter trained with ``attention: bidirectional`` (see :class:`AttentionMode`) runs its
row of the batch without the causal mask: every token attends to every real token of its
own input. Other rows of the same forward pass keep the causal mask.

Probabilities are a float32 softmax over the head's float32 logits.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias

from loraswap.adapters.compatibility import check_head
from loraswap.adapters.lora_format import ClassificationHead, LoraAdapterWeights
from loraswap.adapters.package import AttentionMode, TaskKind
from loraswap.core.errors import LoraswapError
from loraswap.core.identity import AdapterVersionRef
from loraswap.service.engine.observer import EngineObserver
from loraswap.service.engine.residency import LoraSlotManager
from loraswap.service.engine.runner import LlamaRunner


@dataclass
class ClassificationRequest:
    """One input to classify with one seq-cls or token-cls adapter."""

    request_id: str
    prompt_ids: list[int]
    task: TaskKind
    adapter: AdapterVersionRef
    adapter_weights: LoraAdapterWeights = field(repr=False)
    # Requests sharing a fairness key share one turn of the round-robin admission.
    fairness_key: str = "default"
    arrived_at: float = field(default_factory=time.perf_counter)
    attention: AttentionMode = AttentionMode.CAUSAL

    def __post_init__(self) -> None:
        if not self.task.has_labels:
            raise ValueError(f"task {self.task} is not a classification task")
        check_head(self.adapter_weights, self.task)

    @property
    def head(self) -> ClassificationHead:
        """The adapter's head (checked present on construction)."""
        assert self.adapter_weights.head is not None
        return self.adapter_weights.head

    @property
    def adapter_label(self) -> str:
        """The adapter's name for metrics and logs."""
        return str(self.adapter.ref)


@dataclass(frozen=True)
class ClassificationResult:
    """Label probabilities: one row for seq-cls, one row per input token for token-cls."""

    probs: list[list[float]]
    prompt_tokens: int
    # Drift hook: the mean-pooled final-normed hidden state of the input, from this same
    # forward pass (no extra work beyond a mean); see service/drift/reference.py.
    embedding: list[float] | None = None


class ClassificationStream:
    """Carries one classification result from the engine thread to the awaiting loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[ClassificationResult] = loop.create_future()
        # Written by the event loop, read by the engine thread between steps.
        self.cancelled = False

    def deliver(self, outcome: ClassificationResult | LoraswapError) -> None:
        """Settle the result (thread-safe; called by the engine thread)."""
        self._loop.call_soon_threadsafe(self._settle, outcome)

    def _settle(self, outcome: ClassificationResult | LoraswapError) -> None:
        if self._future.done():  # the awaiting request went away first
            return
        if isinstance(outcome, LoraswapError):
            self._future.set_exception(outcome)
            self._future.exception()  # retrieved: no warning when nobody awaits it
        else:
            self._future.set_result(outcome)

    def cancel(self) -> None:
        """Ask the engine to drop this request if it has not run yet."""
        self.cancelled = True

    async def result(self) -> ClassificationResult:
        """The probabilities; an engine-side error is raised here."""
        return await self._future


@dataclass
class PendingClassification:
    """A classification request in the scheduler: queued, then run in one step."""

    request: ClassificationRequest
    stream: ClassificationStream
    slot: int = 0
    done: bool = False


def pooled_position(prompt_ids: list[int], pad_token_id: int | None) -> int:
    """The token whose hidden state a seq-cls head reads.

    transformers' ``LlamaForSequenceClassification`` takes the rightmost token that is not
    ``config.pad_token_id`` (position 0 if all are), or the last token when the model has
    no pad token. For an input without pad tokens that is its last token.
    """
    if pad_token_id is None:
        return len(prompt_ids) - 1
    for index in range(len(prompt_ids) - 1, -1, -1):
        if prompt_ids[index] != pad_token_id:
            return index
    return 0


def mean_pooled(hidden: torch.Tensor, lengths: list[int]) -> list[list[float]]:
    """Drift hook: each prompt's final-normed hidden states averaged over its real tokens.

    The same vector ``training/profile.py`` stores as ``embedding_served`` (the backbone's
    ``last_hidden_state`` with the adapter applied, mean-pooled over the attention mask).
    """
    rows: list[list[float]] = [hidden[row, :length].float().mean(0).cpu().tolist()
                               for row, length in enumerate(lengths)]
    return rows


class SlotHeads:
    """Heads of the classification adapters in slots: float32 copies on the model's device.

    Keyed by slot and checked against the adapter key, so a slot reloaded with another
    adapter gets that adapter's head; at most one head per slot is held.
    """

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._heads: dict[int, tuple[AdapterVersionRef, torch.Tensor, torch.Tensor | None]] = {}

    def get(self, slot: int, key: AdapterVersionRef, head: ClassificationHead,
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight and bias of ``key``'s head, copied to the device on first use in ``slot``."""
        cached = self._heads.get(slot)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        weight = head.weight.to(self._device, torch.float32)
        bias = None if head.bias is None else head.bias.to(self._device, torch.float32)
        self._heads[slot] = (key, weight, bias)
        return weight, bias


class BatchClassifier:
    """Runs the classification requests admitted in one scheduler step, and finishes them."""

    def __init__(self, runner: LlamaRunner, slots: LoraSlotManager, observer: EngineObserver,
                 pad_token_id: int | None) -> None:
        self._runner = runner
        self._slots = slots
        self._observer = observer
        self._pad_token_id = pad_token_id
        self._heads = SlotHeads(runner.device)

    def run(self, items: list[PendingClassification]) -> None:
        """One forward pass over every item (slots already acquired); deliver the results."""
        with torch.inference_mode():
            hidden = self._runner.encode(
                [i.request.prompt_ids for i in items], [i.slot for i in items],
                bidirectional=[i.request.attention is AttentionMode.BIDIRECTIONAL
                               for i in items])
            probs = [self._probs(hidden[row], item) for row, item in enumerate(items)]
            pooled = mean_pooled(hidden, [len(i.request.prompt_ids) for i in items])
        for item, rows, embedding in zip(items, probs, pooled, strict=True):
            result = ClassificationResult(probs=rows, prompt_tokens=len(item.request.prompt_ids),
                                          embedding=embedding)
            self.finish(item, result, "classified")

    def _probs(self, hidden: torch.Tensor, item: PendingClassification) -> list[list[float]]:
        request = item.request
        weight, bias = self._heads.get(item.slot, request.adapter, request.head)
        if request.task is TaskKind.SEQ_CLS:
            index = pooled_position(request.prompt_ids, self._pad_token_id)
            states = hidden[index : index + 1]
        else:
            states = hidden[: len(request.prompt_ids)]
        logits = F.linear(states.float(), weight, bias)
        rows: list[list[float]] = torch.softmax(logits, dim=-1).cpu().tolist()
        return rows

    def finish(self, item: PendingClassification, outcome: ClassificationResult | LoraswapError,
               reason: str) -> None:
        """Deliver ``outcome`` once and give the item's slot reference back."""
        if item.done:
            return
        item.done = True
        self._slots.release(item.slot)
        item.slot = 0
        item.stream.deliver(outcome)
        self._observer.request_finished(item.request.adapter_label, reason, 0)
