"""The generation signals (output length, token log-probability), token-cls word tags and
confidence, and the predicted-label reference: parsing, windows and scores."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from loraswap.adapters.words import split_words
from loraswap.service.api.classification import (
    EncodedInput,
    encode_input,
    word_predictions,
    word_starts,
)
from loraswap.service.drift.monitor import scores_of
from loraswap.service.drift.records import (
    GREEDY,
    SAMPLED,
    GenerationSignals,
    decoding_of,
    generation_records,
)
from loraswap.service.drift.reference import MixtureReference, parse_profile, regroup
from loraswap.service.drift.windows import VersionWindow
from loraswap.service.engine.requests import GenerationEvent
from loraswap.service.engine.sampling import SamplingParams
from tests.service.drift.helpers import (
    CAP,
    REF,
    generation_profile,
    generations,
    monitor,
    profile,
    psi_against,
    score,
    token_profile,
    token_records,
)

GENERATION_SIGNALS = [("output_length", "psi"), ("token_logprob", "psi")]


# --- reference ------------------------------------------------------------------------

def test_a_causal_lm_profile_gives_both_decodings_on_shared_coarse_bins() -> None:
    reference = parse_profile(generation_profile())
    generation = reference.generation
    assert generation is not None and generation.cap == CAP
    assert generation.decodings == {GREEDY, SAMPLED}
    for mixture in (generation.output_length, generation.token_logprob):
        assert 2 <= len(mixture.edges) - 1 <= 5  # each bin >= 20 % of the pooled reference
        assert all(sum(counts) == 500 for counts in mixture.counts.values())
    # Only the causal-lm signals are read, so nothing classification-only is "missing".
    assert reference.missing == {"embedding": reference.missing["embedding"]}
    assert reference.confidence is None and reference.labels is None


def test_an_older_causal_lm_profile_names_the_missing_generation_signals() -> None:
    document = generation_profile()
    del document["generation"]
    missing = parse_profile(document).missing
    assert {"output_length", "token_logprob"} <= missing.keys()
    assert "reference generations" in missing["output_length"]
    assert "confidence" not in missing and "predicted_label" not in missing


def test_a_decoding_with_too_few_reference_generations_is_left_out() -> None:
    document = generation_profile()
    sampled = document["generation"]["decodings"]["sampled"]
    sampled["output_length_tokens"]["count"] = sampled["token_logprob"]["count"] = 10
    generation = parse_profile(document).generation
    assert generation is not None and generation.decodings == {GREEDY}


def test_the_mixture_weights_each_decoding_by_its_share_of_the_window() -> None:
    mixture = MixtureReference([0, 1, 2, 3], {GREEDY: [10, 0, 0], SAMPLED: [0, 5, 5]})
    assert mixture.expected({GREEDY: 3, SAMPLED: 1}) == pytest.approx([0.75, 0.125, 0.125])
    assert mixture.expected({SAMPLED: 4}) == pytest.approx([0, 0.5, 0.5])
    assert regroup([0, 1, 2, 3, 4], [1, 2, 3, 4], [0, 2, 4]) == [3, 7]


def test_classifiers_prefer_the_predicted_label_distribution() -> None:
    document = profile()
    assert parse_profile(document).label_source == "training labels"
    document["predicted_label_distribution"] = {"shares": {"neg": 0.3, "pos": 0.7}}
    reference = parse_profile(document)
    assert reference.labels == {"neg": 0.3, "pos": 0.7}
    assert reference.label_source == "predictions"
    assert "output_length" not in reference.missing


# --- records and windows ------------------------------------------------------------------

@pytest.mark.parametrize(("params", "expected"), [
    (SamplingParams(), GREEDY),
    (SamplingParams(temperature=1.0, seed=1), SAMPLED),
    (SamplingParams(temperature=0.7), None),
    (SamplingParams(temperature=1.0, top_p=0.9), None),
    (SamplingParams(stop=("\n",)), None),
    (SamplingParams(ignore_eos=True), None),
])
def test_only_decodings_with_a_reference_are_comparable(params: SamplingParams,
                                                        expected: str | None) -> None:
    assert decoding_of(params) == expected


def test_generation_records_carry_length_logprob_and_decoding() -> None:
    event = GenerationEvent(text="hi", token_ids=(), finished=True, prompt_tokens=5,
                            completion_tokens=3, token_logprobs=(-0.5, -1.0, -1.5),
                            embedding=[0.0] * 4)
    [record] = generation_records("cmpl-1", REF, ["prompt"], [{"text": "hi"}], [event],
                                  [SamplingParams(max_new_tokens=10, temperature=1.0)])
    assert (record.output_tokens, record.mean_logprob) == (3, -1.0)
    assert record.generation == GenerationSignals((-0.5, -1.0, -1.5), SAMPLED, 10)
    assert record.embedding is not None and record.embedding.shape == (4,)


def test_long_generations_are_compared_on_their_first_cap_tokens() -> None:
    signals = GenerationSignals(tuple([-1.0] * 64 + [-3.0] * 36), GREEDY, 256)
    assert signals.capped(64) == (64.0, -1.0)
    # A limit under the reference's would cut lengths the reference did not cut.
    assert GenerationSignals((-1.0,) * 16, GREEDY, 16).capped(64) is None
    assert GenerationSignals((-1.0, math.nan), GREEDY, 64).capped(64) is None


def test_the_window_keeps_only_comparable_generations() -> None:
    window = VersionWindow(parse_profile(generation_profile()), 100)
    for record in (generations(5, "greedy") + generations(5, "other")
                   + generations(5, "sampled", max_new_tokens=16)):
        window.add(record)
    assert window.samples == 15  # every input counts for the window's size
    assert [g.decoding for g in window.generations] == [GREEDY] * 5


# --- scores ---------------------------------------------------------------------------

def test_generation_scores_are_calm_in_distribution_and_alert_when_shifted() -> None:
    mon, registry, _ = monitor(document=generation_profile())
    mixed = generations(120, "greedy", seed=3) + generations(80, "sampled", seed=4)
    for record in mixed:
        mon.process(record)
    mon.score_all()
    calm = {s: score(registry, *s) for s in GENERATION_SIGNALS}
    assert all(v is not None and v < 0.1 for v in calm.values()), calm
    for record in generations(200, "greedy", shift=1.0, seed=5):
        mon.process(record)
    mon.score_all()
    drifted = {s: score(registry, *s) for s in GENERATION_SIGNALS}
    assert all(v is not None and v > 0.25 for v in drifted.values()), drifted


def test_sampled_traffic_is_not_drift_against_a_reference_with_both_decodings() -> None:
    """The trap a greedy-only reference sets: sampled answers have lower log-probabilities
    and other lengths by construction. Against their own decoding's reference they are
    calm; against the greedy reference they would score far over the alert band."""
    sampled = generations(200, "sampled", seed=6)
    both = VersionWindow(parse_profile(generation_profile()), 500)
    for record in sampled:
        both.add(record)
    calm = dict(((s, m), v) for s, m, v in scores_of(both, 50))
    assert all(calm[s] < 0.1 for s in GENERATION_SIGNALS), calm

    greedy_only = parse_profile(generation_profile(decodings=("greedy",)))
    window = VersionWindow(greedy_only, 500)
    for record in sampled:
        window.add(record)
    names = {signal for signal, _, _ in scores_of(window, 50)}
    assert not window.generations and not names & {"output_length", "token_logprob"}
    mixture = greedy_only.generation.token_logprob  # type: ignore[union-attr]
    wrong = psi_against(mixture, [g.mean_logprob or 0.0 for g in sampled])
    assert wrong > 1.0


def test_token_cls_word_tags_and_confidence_are_scored() -> None:
    mon, registry, _ = monitor(document=token_profile())
    for record in token_records(200, seed=3):
        mon.process(record)
    mon.score_all()
    signals = [("predicted_label", "psi"), ("predicted_label", "js"), ("confidence", "psi"),
               ("input_length", "psi"), ("embedding", "mmd")]
    calm = {s: score(registry, *s) for s in signals}
    assert all(v is not None and v < 0.1 for v in calm.values()), calm
    for record in token_records(200, shift=1.0, seed=4):
        mon.process(record)
    mon.score_all()
    drifted = {s: score(registry, *s) for s in signals if s[0] != "input_length"}
    assert all(v is not None and v > 0.25 for v in drifted.values()), drifted
    snapshot = mon.snapshot("acme", "sentiment")
    assert snapshot is not None and snapshot["label_reference"] == "predictions"


# --- token-cls words on the request path --------------------------------------------------

def test_words_are_the_pieces_feedback_tags_whatever_the_tokens_carry() -> None:
    text = "coli (APC) gene-x"
    # Tokens as a byte-level BPE cuts it: " (" carries its space, "ene" continues "g".
    spans = [(0, 0), (0, 4), (4, 6), (6, 9), (9, 10), (10, 12), (12, 15), (15, 16),
             (16, 17)]
    assert word_starts(text, spans) == [1, 2, 3, 4, 5, 7, 8]
    assert len(word_starts(text, spans)) == len(split_words(text))


def test_word_predictions_read_each_words_first_token() -> None:
    encoded = EncodedInput(text="a b", ids=[1, 2, 3], offsets=[(0, 1), (1, 2), (2, 3)],
                           word_starts=[0, 2])
    probs = [[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]]
    words = word_predictions(encoded, probs, ["O", "B-X"])
    assert words.tags == ("O", "B-X")
    assert words.confidence == pytest.approx((0.9 + 0.7) / 2)
    empty = word_predictions(EncodedInput("", [1], [(0, 0)], []), [[1.0, 0.0]], ["O", "B-X"])
    assert empty.tags == () and empty.confidence is None


def test_the_window_counts_every_word_of_every_input() -> None:
    window = VersionWindow(parse_profile(token_profile()), 50)
    for record in token_records(50, seed=9):
        window.add(record)
    counts = window.label_counts()
    assert sum(counts.values()) == 500
    assert counts["O"] / 500 == pytest.approx(0.8, abs=0.05)


@pytest.mark.parametrize("words", [True, False])
def test_served_words_are_the_words_training_tags(tiny_base_dir: Path, words: bool) -> None:
    """Live word starts on the base's real tokenizer are the training encoder's."""
    from transformers import AutoTokenizer

    from loraswap.service.api.prompts import PromptLimits
    from loraswap.training.data import TokenExample
    from loraswap.training.tasks import encode_words

    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    text = "the zzqxv disease ( of ) the dog ."
    served = encode_input(tokenizer, text, PromptLimits(128, 256, 16), offsets=True,
                          words=words)
    pieces = split_words(text)
    trained = encode_words(tokenizer, TokenExample(pieces, ["O"] * len(pieces)), {"O": 0}, 128)
    assert served.word_starts == trained.word_starts
    assert len(trained.word_starts) == len(pieces) == 9
