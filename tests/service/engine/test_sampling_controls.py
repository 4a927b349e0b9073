"""Penalties, logit_bias, top_k and min_p against references written here from the
OpenAI / vLLM definitions."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from loraswap.core.errors import InvalidRequestError
from loraswap.service.engine.sampling import SamplingParams, TokenSampler

VOCAB = 12


def reference_process(logits: list[float], prompt: list[int], output: list[int],
                      bias: dict[int, float], presence: float, frequency: float,
                      repetition: float) -> list[float]:
    """vLLM's order: logit_bias, then repetition (prompt + output tokens: divide a positive
    logit, multiply a negative one), frequency (count in the output) and presence (once
    per token present in the output), as OpenAI defines the last two."""
    out = list(logits)
    for token, value in bias.items():
        out[token] += value
    counts = Counter(output)
    for token in range(len(out)):
        if token in counts or token in prompt:
            out[token] = out[token] / repetition if out[token] > 0 else out[token] * repetition
        out[token] -= counts[token] * frequency
        out[token] -= (1.0 if counts[token] else 0.0) * presence
    return out


@pytest.mark.parametrize(("presence", "frequency", "repetition"),
                         [(0.5, 0.0, 1.0), (0.0, 0.7, 1.0), (0.0, 0.0, 1.3),
                          (-0.4, 1.1, 0.8), (1.5, -0.5, 2.0)])
def test_penalties_and_bias_match_the_reference(presence: float, frequency: float,
                                                repetition: float) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(VOCAB, generator=generator) * 3
    prompt, output = [1, 2, 2, 9], [3, 3, 3, 2, 7]
    bias = {0: 5.0, 7: -2.5, 11: 100.0}
    sampler = TokenSampler(SamplingParams(
        presence_penalty=presence, frequency_penalty=frequency, repetition_penalty=repetition,
        logit_bias=tuple(bias.items())), tuple(prompt))
    sampler.process(logits)  # the state exists from the first step on
    for token in output:
        sampler.penalties.record(token)
    got = sampler.process(logits)
    expected = reference_process(logits.tolist(), prompt, output, bias, presence, frequency,
                                 repetition)
    torch.testing.assert_close(got, torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_greedy_follows_the_bias_and_penalties_step_by_step() -> None:
    """A +100 bias wins greedy decoding; a frequency penalty then walks the argmax off a
    token once it has been chosen often enough."""
    logits = torch.tensor([4.0, 3.9, 3.8] + [0.0] * (VOCAB - 3))
    biased = TokenSampler(SamplingParams(logit_bias=((8, 100.0),)))
    assert [biased.pick(logits)[0] for _ in range(3)] == [8, 8, 8]
    walked = TokenSampler(SamplingParams(frequency_penalty=0.25))
    assert [walked.pick(logits)[0] for _ in range(3)] == [0, 1, 2]


def test_logprobs_are_read_after_bias_and_before_temperature() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0] + [-3.0] * (VOCAB - 4))
    sampler = TokenSampler(SamplingParams(temperature=0.3, seed=1, logprobs=2,
                                          logit_bias=((3, 4.0),)))
    token, entry = sampler.pick(logits)
    expected = torch.log_softmax(logits + torch.eye(VOCAB)[3] * 4.0, dim=-1)
    assert entry is not None and entry.token == token
    assert entry.logprob == pytest.approx(float(expected[token]), abs=1e-6)
    assert [t for t, _ in entry.top] == [3, 0]


def draws(params: SamplingParams, logits: torch.Tensor, count: int) -> Counter[int]:
    return Counter(TokenSampler(SamplingParams(**{**params.__dict__, "seed": seed}))
                   .pick(logits)[0] for seed in range(count))


def test_top_k_samples_the_renormalized_k_best() -> None:
    logits = torch.tensor([2.0, 1.8, 1.5, 1.4, 1.3] + [1.2] * (VOCAB - 5))
    counts = draws(SamplingParams(temperature=1.0, top_k=3), logits, 3000)
    assert set(counts) == {0, 1, 2}
    expected = torch.softmax(logits[:3], dim=-1)
    for token in range(3):
        assert counts[token] / 3000 == pytest.approx(float(expected[token]), abs=0.03)
    free = draws(SamplingParams(temperature=1.0), logits, 3000)
    assert len(free) == VOCAB  # without top_k every token shows up


def test_min_p_drops_tokens_below_its_share_of_the_best() -> None:
    probs = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05] + [0.0] * (VOCAB - 5)) + 1e-9
    logits = probs.log()
    counts = draws(SamplingParams(temperature=1.0, min_p=0.3), logits, 3000)
    # min_p 0.3 of the best 0.4 is 0.12: only the first three remain, renormalized.
    assert set(counts) == {0, 1, 2}
    kept = probs[:3] / probs[:3].sum()
    for token in range(3):
        assert counts[token] / 3000 == pytest.approx(float(kept[token]), abs=0.03)


@pytest.mark.parametrize("fields", [
    {"top_k": -1}, {"min_p": 1.5}, {"presence_penalty": 2.5}, {"frequency_penalty": -3},
    {"repetition_penalty": 0}, {"logit_bias": tuple((i, 1.0) for i in range(301))},
    {"logit_bias": ((1, 101.0),)}, {"logprobs": 21}, {"prompt_logprobs": -1}])
def test_out_of_range_controls_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError):
        SamplingParams(**fields)  # type: ignore[arg-type]
