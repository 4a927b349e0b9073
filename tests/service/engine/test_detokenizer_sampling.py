"""Stop strings, streamed text deltas and per-request sampling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from loraswap.core.errors import InvalidRequestError
from loraswap.service.engine.detokenizer import IncrementalText
from loraswap.service.engine.sampling import SamplingParams, TokenSampler, sample_rows


def test_deltas_add_up_and_stop_string_across_tokens_is_cut(tiny_base_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    ids = tokenizer("the quick brown fox jumps over the lazy dog")["input_ids"]
    text = IncrementalText(tokenizer, stop=("fox jumps",))
    deltas = [text.add(token) for token in ids]
    assert text.stopped
    shown = "".join(deltas) + text.flush()
    assert shown == "the quick brown "
    plain = IncrementalText(tokenizer, stop=())
    assert "".join(plain.add(t) for t in ids) + plain.flush() == tokenizer.decode(ids)


def test_partial_stop_string_is_held_back_until_decided(tiny_base_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    ids = tokenizer("red yellow and blue")["input_ids"]
    text = IncrementalText(tokenizer, stop=("blue!",))
    shown = "".join(text.add(t) for t in ids)
    assert not shown.endswith("blue")  # could still become "blue!"
    assert shown + text.flush() == "red yellow and blue"


def test_sampling_is_reproducible_per_seed_and_greedy_is_argmax() -> None:
    logits = torch.randn(3, 50)
    params = SamplingParams(temperature=1.0, seed=5)
    first = [TokenSampler(params).sample(logits[0]) for _ in range(3)]
    assert len(set(first)) == 1
    tiny_p = TokenSampler(SamplingParams(temperature=1.0, top_p=1e-6, seed=1))
    assert tiny_p.sample(logits[1]) == int(logits[1].argmax())
    samplers = [TokenSampler(SamplingParams()), None, TokenSampler(SamplingParams())]
    assert sample_rows(logits, samplers) == [int(logits[0].argmax()), -1,
                                             int(logits[2].argmax())]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ({"temperature": -0.5}, "temperature must be >= 0"),
    ({"top_p": 0.0}, "top_p must be in"),
    ({"stop": ("",)}, "stop strings must be non-empty"),
])
def test_invalid_sampling_parameters_name_the_field(kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidRequestError, match=message):
        SamplingParams(**kwargs)


def _frequencies(params: SamplingParams, logits: torch.Tensor, draws: int = 4000) -> torch.Tensor:
    sampler = TokenSampler(params)
    counts = torch.zeros(logits.numel())
    for _ in range(draws):
        counts[sampler.sample(logits)] += 1
    return counts / draws


def test_sampling_follows_the_tempered_distribution_and_top_p() -> None:
    """Seeded draws (so the test is deterministic) land on every token as often as the
    softmax of logits / temperature says (±0.03 over 4000 draws; an argmax sampler would
    put all mass on one token), and top_p keeps only the smallest head reaching it."""
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    logits = probs.log()
    plain = _frequencies(SamplingParams(temperature=1.0, seed=3), logits)
    torch.testing.assert_close(plain, probs, atol=0.03, rtol=0)
    hot = _frequencies(SamplingParams(temperature=2.0, seed=4), logits)
    torch.testing.assert_close(hot, torch.softmax(logits / 2.0, dim=-1), atol=0.03, rtol=0)
    assert hot[0] > plain[0] + 0.04  # temperature really flattens it
    head = _frequencies(SamplingParams(temperature=1.0, top_p=0.5, seed=5), logits)
    # 0.4 alone is below 0.5, 0.4 + 0.3 reaches it: tokens 3 and 2, renormalized.
    torch.testing.assert_close(head, torch.tensor([0.0, 0.0, 3 / 7, 4 / 7]), atol=0.03, rtol=0)
