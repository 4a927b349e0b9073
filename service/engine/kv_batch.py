"""The running batch over the paged KV cache: block tables, preemption, prompt states.

Split from the scheduler (which owns the queue, admission order and the forward pass): this
owns which sequences hold blocks, in admission order, and which wait to be recomputed.

When the pool runs out while planning a step, the newest running sequence is *preempted*:
its blocks are freed and it waits, ahead of every new request, to be readmitted and
recomputed from its prompt and the tokens it already produced. Its stream sees only a
longer pause: the recomputation's last logits give its next token, so it completes with the
tokens it would have had. The pool holds at least one ``max_model_len`` sequence (checked
when the engine is built), so a sequence alone always fits and nothing fails for want of
memory.
"""

from __future__ import annotations

import torch

from loraswap.core.errors import LoraswapError
from loraswap.service.engine.kv_pool import KvBlockPool, block_keys
from loraswap.service.engine.logits import prompt_logprobs
from loraswap.service.engine.observer import EngineObserver
from loraswap.service.engine.paged_attention import StepChunk
from loraswap.service.engine.runner import LlamaRunner
from loraswap.service.engine.sampling import Picked, chosen_logprobs, pick_rows, token_of
from loraswap.service.engine.sequences import GenerationSequence


class PagedBatch:
    """Running sequences (oldest first) and preempted ones (oldest first) over one pool."""

    def __init__(self, pool: KvBlockPool, observer: EngineObserver, prefix_cache: bool) -> None:
        self.pool = pool
        self.running: list[GenerationSequence] = []
        self.preempted: list[GenerationSequence] = []
        self._observer = observer
        self._prefix_cache = prefix_cache
        self._admitted_count = 0

    @property
    def decoding(self) -> int:
        """Running sequences whose prompt is fully computed (one token a step)."""
        return sum(1 for seq in self.running if seq.num_tokens - seq.computed <= 1)

    @property
    def kv_usage(self) -> float:
        """Fraction (0-1) of the pool's blocks that running sequences hold (cached prefixes
        nobody uses do not count: they are evicted on demand)."""
        return self.pool.used / self.pool.num_blocks

    def release(self, seq: GenerationSequence) -> bool:
        """Take an ending sequence out, giving its blocks back; whether it was running."""
        running = seq in self.running
        if running:
            self.running.remove(seq)
        if seq in self.preempted:
            self.preempted.remove(seq)
        self.pool.release(seq.blocks)
        seq.blocks = []
        return running

    def plan(self, budget: int) -> tuple[list[GenerationSequence], int]:
        """This step's work for the running sequences (``seq.chunk`` tokens each), oldest
        first, within a prompt-token ``budget``, preempting the newest when a decode needs a
        block the pool lacks; and what is left of the budget."""
        queue = list(self.running)
        scheduled: list[GenerationSequence] = []
        while queue:
            seq = queue.pop(0)
            remaining = seq.num_tokens - seq.computed
            if remaining > 1:  # prompt (or recomputation) still being prefilled
                seq.chunk = min(remaining, budget)
                budget -= seq.chunk
                if seq.chunk:
                    scheduled.append(seq)
                continue
            need = self.pool.blocks_for(seq.num_tokens) - len(seq.blocks)
            fresh = self.pool.allocate(need) if need > 0 else []
            while fresh is None and queue:
                self.preempt(queue.pop())
                fresh = self.pool.allocate(need)
            if fresh is None:  # it is the newest itself
                self.preempt(seq)
                continue
            seq.blocks.extend(fresh)
            seq.chunk = 1
            scheduled.append(seq)
        return scheduled, budget

    def preempt(self, seq: GenerationSequence) -> None:
        """Give back a running sequence's blocks; it waits (first) to be recomputed."""
        self.running.remove(seq)
        self.pool.release(seq.blocks)
        seq.blocks, seq.computed, seq.registered, seq.chunk = [], 0, 0, 0
        seq.block_sums = []
        self.preempted.append(seq)
        self.preempted.sort(key=lambda item: item.order)
        self._observer.preempted(seq.request.adapter_label)

    def readmit(self, budget: int, max_running: int,
                ) -> tuple[list[GenerationSequence], int]:
        """Preempted sequences back into the batch, oldest first, while there is room,
        budget and blocks; those readmitted, and the budget left."""
        readmitted: list[GenerationSequence] = []
        while self.preempted and len(self.running) < max_running and budget > 0:
            if not self.start(self.preempted[0], budget):
                break
            seq = self.preempted.pop(0)
            budget -= seq.chunk
            readmitted.append(seq)
        return readmitted, budget

    def start(self, seq: GenerationSequence, budget: int) -> bool:
        """Give ``seq`` the blocks of every token it has (reusing its scope's cached prefix
        blocks), join the batch with a first chunk of at most ``budget`` tokens; False, with
        nothing taken, when the pool lacks the blocks."""
        pool, prompt = self.pool, seq.request.prompt_ids
        # At least one token is computed: its logits give the next token.
        reusable = min(len(prompt), seq.num_tokens - 1) // pool.block_size
        # A request that wants its prompt's log-probabilities computes every prompt token.
        keys = (block_keys(seq.request.cache_scope, prompt, pool.block_size, reusable)
                if self._prefix_cache and seq.request.params.prompt_logprobs is None else [])
        hits = pool.lookup(keys)
        fresh = pool.allocate(pool.blocks_for(seq.num_tokens) - len(hits))
        if fresh is None:
            pool.release(hits)
            return False
        self._observer.prefix_lookup(queried=len(keys), hit=len(hits))
        seq.blocks = hits + fresh
        seq.block_sums = [pool.hidden_sum(block) for block in hits]
        seq.computed, seq.registered = len(hits) * pool.block_size, len(hits)
        seq.holds_slot = True
        seq.chunk = min(seq.num_tokens - seq.computed, budget)
        if not seq.order:  # a preempted sequence keeps its place in line
            self._admitted_count += 1
            seq.order = self._admitted_count
        self.running.append(seq)
        self.running.sort(key=lambda item: item.order)
        return True

    def forward(self, runner: LlamaRunner, seqs: list[GenerationSequence],
                ) -> list[tuple[GenerationSequence, Picked | LoraswapError, float]]:
        """Run the planned chunks in one pass; for each sequence whose chunk reaches its last
        known token, the token sampled from the chunk's last logits (or that row's error)
        and its log-probability."""
        chunks = [StepChunk(seq.tokens(seq.computed, seq.computed + seq.chunk), seq.computed,
                            seq.blocks, seq.slot) for seq in seqs]
        out = runner.step(chunks, [len(seq.request.prompt_ids) for seq in seqs])
        sampling = [i for i, seq in enumerate(seqs) if seq.computed + seq.chunk == seq.num_tokens]
        logits = out.logits[sampling] if len(sampling) < len(seqs) else out.logits
        picked = pick_rows(logits, [seqs[i].sampler for i in sampling])
        logprobs = chosen_logprobs(logits, [token_of(p) for p in picked])
        for seq, hidden in zip(seqs, out.hidden, strict=True):
            if hidden is not None:
                self.add_prompt_states(seq, hidden)
                if seq.request.params.prompt_logprobs is not None:
                    add_prompt_logprobs(runner, seq, hidden)
            seq.computed += seq.chunk
        return [(seqs[i], p, logprob)
                for i, p, logprob in zip(sampling, picked, logprobs, strict=True)
                if p is not None]

    def add_prompt_states(self, seq: GenerationSequence, hidden: torch.Tensor) -> None:
        """Fold a chunk's normed prompt hidden states into per-block sums; register the
        prompt blocks now complete in the prefix cache, and set the drift embedding once the
        whole prompt is in."""
        size, start = self.pool.block_size, seq.computed
        for first in range(start - start % size, start + hidden.shape[0], size):
            rows = hidden[max(first, start) - start : first + size - start].sum(0)
            index = first // size
            if index < len(seq.block_sums):
                seq.block_sums[index] = seq.block_sums[index] + rows
            else:
                seq.block_sums.append(rows)
        prompt = seq.request.prompt_ids
        end = start + hidden.shape[0]
        complete = end // size
        if self._prefix_cache and complete > seq.registered:
            keys = block_keys(seq.request.cache_scope, prompt, size, complete)
            for index in range(seq.registered, complete):
                self.pool.register(keys[index], seq.blocks[index], seq.block_sums[index])
            seq.registered = complete
        if end == len(prompt) and seq.embedding is None:
            total = torch.stack(seq.block_sums).sum(0) / len(prompt)
            seq.embedding = total.cpu().tolist()



def add_prompt_logprobs(runner: LlamaRunner, seq: GenerationSequence,
                        hidden: torch.Tensor) -> None:
    """Extend ``seq``'s prompt log-probabilities (echo) with a chunk's positions; once the
    prompt is complete they wait in ``seq.prompt_logprobs`` for its first event. A chunk
    recomputed after preemption adds nothing twice."""
    prompt, top = seq.request.prompt_ids, seq.request.params.prompt_logprobs
    if top is None or seq.prompt_entries is None:
        return
    start = seq.computed
    # Position p's logits predict token p + 1; the last prompt position's predict the
    # first generated token (sampled, not a prompt entry).
    wanted = len(seq.prompt_entries) - 1 - start
    stop = min(hidden.shape[0], len(prompt) - 1 - start)
    if wanted < 0 or wanted >= stop:
        return
    entries = prompt_logprobs(hidden[wanted:stop], prompt[start + wanted: start + stop + 1],
                              top, runner.head_logits)
    seq.prompt_entries.extend(entries[1:])
    if len(seq.prompt_entries) == len(prompt):
        seq.prompt_logprobs, seq.prompt_entries = tuple(seq.prompt_entries), None
