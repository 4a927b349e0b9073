"""Continuous batching: the scheduler, stepped by the engine thread, owns the running batch.

Each iteration (1) drops cancelled sequences, (2) plans the running batch: one token for
every decoding sequence, taking a new KV block when one crosses a block boundary, and the
next chunk of every prompt still being prefilled, within a per-step prompt-token budget
(``max_prefill_tokens``; while sequences decode, ``prefill_tokens_per_decode`` per decoding
sequence, so a long prompt does not stall the running streams), (3) admits waiting requests
while the batch has room, the budget is not spent and the pool has the blocks for their
prompt (shared prefix blocks from the prefix cache count as had), (4) runs all of it in one
forward pass. Finished sequences leave at once and give back their blocks and their slot
reference. When the pool runs out during (2), the newest running sequence is preempted and
recomputed later (:mod:`kv_batch`).

Classification requests (seq-cls, token-cls adapters) wait in the same queue and are
admitted by the same rules, but need no cache row: the ones admitted in a step run
together in one forward pass (:class:`BatchClassifier`) and finish in that step.

Waiting requests are the admission queue's (:mod:`loraswap.service.engine.admission`: the
one place the event loop and the engine thread meet); this module is the engine thread's
step loop over the running batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from loraswap.core.errors import LoraswapError
from loraswap.service.engine.admission import AdmissionQueue, Queued
from loraswap.service.engine.classify import (
    BatchClassifier,
    ClassificationRequest,
    ClassificationStream,
    PendingClassification,
)
from loraswap.service.engine.detokenizer import IncrementalText, Tokenizer
from loraswap.service.engine.fair_queue import QueuePlaces
from loraswap.service.engine.kv_batch import PagedBatch
from loraswap.service.engine.logits import TokenLogprob
from loraswap.service.engine.observer import EngineObserver
from loraswap.service.engine.requests import GenerationEvent, GenerationRequest, RequestStream
from loraswap.service.engine.residency import LoraSlotManager
from loraswap.service.engine.runner import LlamaRunner
from loraswap.service.engine.sampling import Picked, TokenSampler
from loraswap.service.engine.sequences import GenerationSequence, SchedulerConfig
from loraswap.service.errors import NotReadyError, OverloadedError, RequestCancelledError

logger = logging.getLogger(__name__)


Q = TypeVar("Q", GenerationSequence, PendingClassification)


class ContinuousBatchScheduler:
    """Owns the waiting queue and the running batch; stepped by the engine thread."""

    def __init__(
        self, runner: LlamaRunner, slots: LoraSlotManager, tokenizer: Tokenizer,
        config: SchedulerConfig, observer: EngineObserver, pad_token_id: int | None = None,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        """``pad_token_id``: the model's pad token, which seq-cls pooling skips; ``wake``
        tells the thread that steps this scheduler to look for work (a submit, a cancel)."""
        self._runner = runner
        self._slots = slots
        self._tokenizer = tokenizer
        self.config = config
        self._observer = observer
        self._queue = AdmissionQueue(config)
        self._classifier = BatchClassifier(runner, slots, observer, pad_token_id)
        self._batch = PagedBatch(runner.pool, observer, config.prefix_cache)
        self._running = self._batch.running  # admission order, oldest first
        self._preempted = self._batch.preempted  # readmitted first, oldest first
        self._pool = runner.pool
        self._waiting_for_slot = False
        # Names of the running batch's adapters, replaced after each step (read elsewhere).
        self._running_adapters: tuple[str, ...] = ()
        self._admitting: list[GenerationSequence] = []  # in this step's forward pass
        self._classifying: list[PendingClassification] = []  # admitted in this step
        self._wake = wake

    @property
    def num_waiting(self) -> int:
        """Requests admitted to the queue but not yet running."""
        return self._queue.size

    @property
    def num_running(self) -> int:
        """Sequences in the running batch."""
        return len(self._running)

    @property
    def kv_usage(self) -> float:
        """Fraction (0-1) of the KV pool's blocks that running sequences hold."""
        return self._batch.kv_usage

    def adapter_names(self) -> tuple[list[str], list[str]]:
        """Adapter names (no versions, no base) of the running batch and of the queue, for
        the gateway's ``lora_requests_info`` gauge; safe to call from any thread (the running
        names are the snapshot the engine thread published after its last step)."""
        return list(self._running_adapters), self._queue.adapter_names()

    def submit(self, request: GenerationRequest, stream: RequestStream,
               places: QueuePlaces | None = None) -> None:
        """Queue a request (in one of ``places`` reserved for it, if any are left); raises
        :class:`OverloadedError` when the queue has no room for it."""
        seq = GenerationSequence(
            request=request, stream=stream,
            sampler=TokenSampler(request.params, tuple(request.prompt_ids)),
            text=IncrementalText(self._tokenizer, request.params.stop),
        )
        self._enqueue(seq, places)

    def submit_classification(self, request: ClassificationRequest,
                              stream: ClassificationStream,
                              places: QueuePlaces | None = None) -> None:
        """Queue a classification request, as :meth:`submit` does."""
        self._enqueue(PendingClassification(request, stream), places)

    def reserve(self, key: str, places: int) -> QueuePlaces:
        """Hold ``places`` of ``key``'s share of the queue (:meth:`AdmissionQueue.reserve`)."""
        return self._queue.reserve(key, places)

    def _enqueue(self, item: Queued, places: QueuePlaces | None) -> None:
        for pushed_out in self._queue.push(item, places):
            self._drop(pushed_out, "shed", OverloadedError(
                f"request queue is full ({self.config.max_queue} waiting) and this caller "
                "holds the most of it; retry later", retry_after=1))
        self.kick()

    def withdraw(self, stream: RequestStream | ClassificationStream) -> None:
        """Take a cancelled request out of the queue now, so it frees its place at once
        (a running one is dropped at the next step)."""
        item = self._queue.withdraw(stream)
        if item is not None:
            self._drop(item, "cancelled", RequestCancelledError("request cancelled"))

    def kick(self) -> None:
        """Make the engine thread reconsider its queues now (after a submit or cancel)."""
        self._waiting_for_slot = False
        self._wake()

    def has_work(self) -> bool:
        """Whether a step would do something (lock-free: called under the thread's lock)."""
        return bool(self._running) or (
            (self._queue.size > 0 or bool(self._preempted)) and not self._waiting_for_slot)

    def step(self) -> None:
        """One iteration: drop cancelled, admit and prefill, decode; never raises.

        A failure is contained to the requests it concerns: a forward or classification
        pass that raises is retried one request at a time, so only the request that breaks
        it fails; a row whose logits or sampling fail ends that request alone.
        """
        try:
            self._step()
        except Exception:
            logger.exception("engine step failed; failing the requests it was running")
            error = LoraswapError("engine step failed")
            failed: list[Queued] = [*self._running, *self._admitting, *self._classifying]
            for item in failed:
                self._drop(item, "error", error)
        self._admitting, self._classifying = [], []

    def _step(self) -> None:
        self._reap_cancelled()
        budget = self.config.prefill_budget(self._batch.decoding, self._pool.block_size)
        scheduled, budget = self._batch.plan(budget)
        admitted, classify = self._admit(budget)
        self._admitting, self._classifying = admitted, classify
        # Requests wait but none could be admitted although nothing runs: the slots they
        # need are all pinned. Sleep until something changes (a submit or cancel kicks us).
        stuck = not admitted and not classify and not self._running and self._queue.size > 0
        if classify:
            self._isolated(classify, self._classifier.run)
        batch = scheduled + admitted
        if batch:
            # Single-token chunks (decodes) first: the runner attends to them together.
            batch.sort(key=lambda seq: seq.chunk != 1)
            self._isolated(batch, self._forward)
        self._admitting, self._classifying = [], []
        self._waiting_for_slot = stuck
        self._publish_running()
        self._observer.scheduler_state(waiting=self._queue.size + len(self._preempted),
                                       running=len(self._running))
        self._observer.kv_blocks(used=self._pool.used, total=self._pool.num_blocks,
                                 cached=self._pool.num_cached)

    def _publish_running(self) -> None:
        """Replace the immutable snapshot of running adapters that other threads read."""
        self._running_adapters = tuple(str(seq.request.adapter.ref)
                                       for seq in self._running
                                       if seq.request.adapter is not None)

    def _isolated(self, items: list[Q], run: Callable[[list[Q]], None]) -> None:
        """``run(items)``; if it raises, run each item alone and fail only those that raise."""
        try:
            run(items)
            return
        except Exception:
            if len(items) == 1:
                logger.exception("request %s failed in the engine", items[0].request.request_id)
                self._drop(items[0], "error", LoraswapError("the engine failed this request"))
                return
            logger.warning("a batch of %d failed; retrying its requests one by one", len(items))
        for item in items:
            self._isolated([item], run)

    def _reap_cancelled(self) -> None:
        for seq in [*self._running, *self._preempted]:
            if seq.stream.cancelled:
                self._finish(seq, "cancelled", RequestCancelledError("request cancelled"))

    def _admit(self, budget: int,
               ) -> tuple[list[GenerationSequence], list[PendingClassification]]:
        """Requests to start this step: preempted sequences first (oldest first), then
        waiting ones in fairness order; a generation needs room in the batch, some of the
        prompt budget and the blocks of its prompt, a classification its whole prompt in
        the budget (it needs no blocks)."""
        admitted, budget = self._batch.readmit(budget, self.config.max_batch_size)
        if self._preempted:  # nothing new goes ahead of a sequence waiting to resume
            return admitted, []
        chosen = self._queue.select(self.config.max_batch_size - len(self._running), budget,
                                    self._take_slot, self._start)
        for item in chosen.cancelled:
            self._drop(item, "cancelled", RequestCancelledError("request cancelled"))
        return admitted + chosen.generations, chosen.classifications

    def _start(self, seq: GenerationSequence, budget: int) -> bool:
        """Join the batch with blocks for its prompt; False (its slot given back) while the
        pool lacks them."""
        if self._batch.start(seq, budget):
            return True
        self._slots.release(seq.slot)
        return False

    def _take_slot(self, item: Queued) -> bool:
        request = item.request
        if request.adapter is None or request.adapter_weights is None:
            item.slot = 0
            return True
        slot = self._slots.acquire(request.adapter, request.adapter_weights)
        if slot is None:
            return False
        item.slot = slot
        return True

    def _forward(self, seqs: list[GenerationSequence]) -> None:
        """One forward pass over the planned chunks; each sequence whose chunk reached its
        last known token takes the token sampled from it."""
        sampled = self._batch.forward(self._runner, seqs)
        now = time.perf_counter()
        for seq, token, logprob in sampled:
            if seq.output_ids:
                self._observer.output_token(seq.request.adapter_label, now - seq.last_token_at)
            else:
                self._observer.first_token(seq.request.adapter_label,
                                           now - seq.request.arrived_at)
            seq.last_token_at = now
            self._accept_or_fail(seq, token, logprob)

    def _accept_or_fail(self, seq: GenerationSequence, token: Picked | LoraswapError,
                        logprob: float) -> None:
        """Take a row's token; a row error, or any failure handling the token (decoding its
        text, matching stop strings), ends this request alone."""
        if isinstance(token, LoraswapError):
            logger.warning("request %s failed: %s", seq.request.request_id, token)
            self._finish(seq, "error", token)
            return
        try:
            seq.logprobs.append(logprob)
            self._accept(seq, token.token, token.logprob)
        except Exception:
            logger.exception("request %s failed after its token", seq.request.request_id)
            self._finish(seq, "error", LoraswapError("the engine failed this request"))

    def _accept(self, seq: GenerationSequence, token: int, entry: TokenLogprob | None) -> None:
        seq.output_ids.append(token)
        entries = (entry,) if entry is not None else ()
        prompt, seq.prompt_logprobs = seq.prompt_logprobs, None
        params = seq.request.params
        reason: str | None = None
        is_eos = ((token in self.config.stop_token_ids and not params.ignore_eos)
                  or token in params.stop_token_ids)
        delta = "" if is_eos else seq.text.add(token)
        if is_eos or seq.text.stopped:
            reason = "stop"
        elif (len(seq.output_ids) >= params.max_new_tokens
              or seq.next_position + 1 >= self.config.max_model_len):
            reason = "length"
        if reason is None:
            seq.stream.push(GenerationEvent(text=delta, token_ids=(token,), logprobs=entries,
                                            prompt_logprobs=prompt))
            return
        delta += seq.text.flush()
        self._finish(seq, reason, None, last=GenerationEvent(
            text=delta, token_ids=(token,), logprobs=entries, prompt_logprobs=prompt))

    def _drop(self, item: Queued, reason: str, error: LoraswapError) -> None:
        """End a request of either kind with ``error`` (cancelled, failed, shutting down)."""
        if isinstance(item, GenerationSequence):
            self._finish(item, reason, error)
        else:
            self._classifier.finish(item, error, reason)

    def _finish(self, seq: GenerationSequence, reason: str, error: LoraswapError | None,
                last: GenerationEvent | None = None) -> None:
        if seq.done:
            return
        seq.done = True
        if self._batch.release(seq):
            # Before the final event: whoever sees the request end sees it gone from the
            # running adapters (gateway metrics), not one step later.
            self._publish_running()
        if seq.holds_slot:  # give the slot reference back once
            self._slots.release(seq.slot)
            seq.holds_slot, seq.slot = False, 0
        prompt_tokens = len(seq.request.prompt_ids)
        completion = len(seq.output_ids)
        seq.stream.push(GenerationEvent(
            text=last.text if last else "", token_ids=last.token_ids if last else (),
            finished=True, finish_reason=reason, prompt_tokens=prompt_tokens,
            completion_tokens=completion, error=error, token_logprobs=tuple(seq.logprobs),
            embedding=seq.embedding, logprobs=last.logprobs if last else (),
            prompt_logprobs=last.prompt_logprobs if last else None,
        ))
        self._observer.request_finished(seq.request.adapter_label, reason, completion)

    def shutdown(self) -> None:
        """Fail everything running or waiting (the server is stopping)."""
        error = NotReadyError("server is shutting down")
        for seq in [*self._running, *self._preempted]:
            self._finish(seq, "error", error)
        for item in self._queue.close():
            self._drop(item, "error", error)
