"""Continuous batching: the scheduler, stepped by the engine thread, owns the running batch.

Each iteration (1) drops cancelled sequences, (2) admits waiting requests into free cache
rows and prefills them together (bounded by a prompt-token budget, so decoding never
stalls for long), (3) runs one decode step for every running sequence. Finished sequences
leave at once and free their row and their slot reference.

Classification requests (seq-cls, token-cls adapters) wait in the same queue and are
admitted by the same rules, but need no cache row: the ones admitted in a step run
together in one forward pass (:class:`BatchClassifier`) and finish in that step.

Waiting requests are the admission queue's (:mod:`loraswap.service.engine.admission`: the
one place the event loop and the engine thread meet); this module is the engine thread's
step loop over the running batch.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import torch

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
from loraswap.service.engine.observer import EngineObserver
from loraswap.service.engine.requests import GenerationEvent, GenerationRequest, RequestStream
from loraswap.service.engine.residency import LoraSlotManager
from loraswap.service.engine.runner import LlamaRunner
from loraswap.service.engine.sampling import TokenSampler, chosen_logprobs, sample_rows
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
        self._running: dict[int, GenerationSequence] = {}  # cache row -> sequence
        self._free_rows = list(range(config.max_batch_size))
        self._waiting_for_slot = False
        # Names of the running batch's adapters, replaced after each step (read elsewhere).
        self._running_adapters: tuple[str, ...] = ()
        self._admitting: list[GenerationSequence] = []  # taken from the queue, not yet running
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
            request=request, stream=stream, sampler=TokenSampler(request.params),
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
        return bool(self._running) or (self._queue.size > 0 and not self._waiting_for_slot)

    def step(self) -> None:
        """One iteration: drop cancelled, admit and prefill, decode; never raises.

        A failure is contained to the requests it concerns: a prefill or classification
        pass that raises is retried one request at a time, so only the request that breaks
        it fails; a row whose logits or sampling fail ends that request alone. Only an
        exception in the shared decode pass fails the sequences that pass was running.
        """
        try:
            self._step()
        except Exception:
            logger.exception("engine step failed; failing the requests it was running")
            error = LoraswapError("engine step failed")
            failed: list[Queued] = [*self._running.values(), *self._admitting,
                                     *self._classifying]
            for item in failed:
                self._drop(item, "error", error)
        self._admitting, self._classifying = [], []

    def _step(self) -> None:
        self._reap_cancelled()
        admitted, classify = self._admit()
        self._admitting, self._classifying = admitted, classify
        # Requests wait but none could be admitted although nothing runs: the slots they
        # need are all pinned. Sleep until something changes (a submit or cancel kicks us).
        stuck = not admitted and not classify and not self._running and self._queue.size > 0
        if admitted:
            self._isolated(admitted, self._prefill)
        if classify:
            self._isolated(classify, self._classifier.run)
        self._admitting, self._classifying = [], []
        if self._running:
            self._decode()
        self._waiting_for_slot = stuck
        self._publish_running()
        self._observer.scheduler_state(waiting=self._queue.size, running=len(self._running))

    def _publish_running(self) -> None:
        """Replace the immutable snapshot of running adapters that other threads read."""
        self._running_adapters = tuple(str(seq.request.adapter.ref)
                                       for seq in self._running.values()
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
        for seq in list(self._running.values()):
            if seq.stream.cancelled:
                self._finish(seq, "cancelled", RequestCancelledError("request cancelled"))

    def _admit(self) -> tuple[list[GenerationSequence], list[PendingClassification]]:
        """Waiting requests to run this step: generations (each given a cache row) and
        classifications (no row), within one prompt-token budget."""
        chosen = self._queue.select(len(self._free_rows), self.config.max_prefill_tokens,
                                    self._take_slot)
        for item in chosen.cancelled:
            self._drop(item, "cancelled", RequestCancelledError("request cancelled"))
        for seq in chosen.generations:
            seq.row = heapq.heappop(self._free_rows)
        return chosen.generations, chosen.classifications

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

    def _prefill(self, seqs: list[GenerationSequence]) -> None:
        out = self._runner.prefill(
            [s.request.prompt_ids for s in seqs], [s.row for s in seqs], [s.slot for s in seqs]
        )
        tokens = sample_rows(out.logits, [s.sampler for s in seqs])
        logprobs = chosen_logprobs(out.logits, tokens)
        for seq, token, logprob, pooled in zip(seqs, tokens, logprobs, out.pooled, strict=True):
            self._running[seq.row] = seq
            now = time.perf_counter()
            self._observer.first_token(seq.request.adapter_label, now - seq.request.arrived_at)
            seq.last_token_at = now
            seq.embedding = pooled
            self._accept_or_fail(seq, token, logprob)

    def _decode(self) -> None:
        width = max(self._running) + 1
        tokens = torch.zeros(width, dtype=torch.long)
        positions = torch.zeros(width, dtype=torch.long)
        slots = torch.zeros(width, dtype=torch.long)
        samplers: list[TokenSampler | None] = [None] * width
        for row, seq in self._running.items():
            tokens[row] = seq.output_ids[-1]
            positions[row] = seq.next_position
            slots[row] = seq.slot
            samplers[row] = seq.sampler
        logits = self._runner.decode(tokens, positions, slots)
        chosen = sample_rows(logits, samplers)
        logprobs = chosen_logprobs(logits, chosen)
        now = time.perf_counter()
        for row, seq in list(self._running.items()):
            self._observer.output_token(seq.request.adapter_label, now - seq.last_token_at)
            seq.last_token_at = now
            self._accept_or_fail(seq, chosen[row], logprobs[row])

    def _accept_or_fail(self, seq: GenerationSequence, token: int | LoraswapError,
                        logprob: float) -> None:
        """Take a row's token; a row error, or any failure handling the token (decoding its
        text, matching stop strings), ends this request alone."""
        if isinstance(token, LoraswapError):
            logger.warning("request %s failed: %s", seq.request.request_id, token)
            self._finish(seq, "error", token)
            return
        try:
            seq.logprobs.append(logprob)
            self._accept(seq, token)
        except Exception:
            logger.exception("request %s failed after its token", seq.request.request_id)
            self._finish(seq, "error", LoraswapError("the engine failed this request"))

    def _accept(self, seq: GenerationSequence, token: int) -> None:
        seq.output_ids.append(token)
        params = seq.request.params
        reason: str | None = None
        is_eos = token in self.config.stop_token_ids and not params.ignore_eos
        delta = "" if is_eos else seq.text.add(token)
        if is_eos or seq.text.stopped:
            reason = "stop"
        elif (len(seq.output_ids) >= params.max_new_tokens
              or seq.next_position + 1 >= self.config.max_model_len):
            reason = "length"
        if reason is None:
            seq.stream.push(GenerationEvent(text=delta, token_ids=(token,)))
            return
        delta += seq.text.flush()
        self._finish(seq, reason, None, last=GenerationEvent(text=delta, token_ids=(token,)))

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
        if self._running.get(seq.row) is seq:
            del self._running[seq.row]
            # Before the final event: whoever sees the request end sees it gone from the
            # running adapters (gateway metrics), not one step later.
            self._publish_running()
        if seq.row >= 0:  # holds a cache row and a slot reference: give both back once
            heapq.heappush(self._free_rows, seq.row)
            self._slots.release(seq.slot)
            seq.row, seq.slot = -1, 0
        prompt_tokens = len(seq.request.prompt_ids)
        completion = len(seq.output_ids)
        seq.stream.push(GenerationEvent(
            text=last.text if last else "", token_ids=last.token_ids if last else (),
            finished=True, finish_reason=reason, prompt_tokens=prompt_tokens,
            completion_tokens=completion, error=error, token_logprobs=tuple(seq.logprobs),
            embedding=seq.embedding,
        ))
        self._observer.request_finished(seq.request.adapter_label, reason, completion)

    def shutdown(self) -> None:
        """Fail everything running or waiting (the server is stopping)."""
        error = NotReadyError("server is shutting down")
        for seq in list(self._running.values()):
            self._finish(seq, "error", error)
        for item in self._queue.close():
            self._drop(item, "error", error)
