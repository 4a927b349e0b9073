"""``loraswap bench loop``'s readers, statistics and table, without servers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from loraswap.bench.loop import LoopError, LoopOptions, prepare
from loraswap.bench.loop_data import (
    Accuracy,
    Example,
    distinct,
    paired_difference,
    read_split,
    wilson,
)
from loraswap.bench.loop_report import markdown


def write_pair(root: Path) -> None:
    (root / "sst2").mkdir(parents=True)
    (root / "sst2" / "train.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"a \"fine\" film {i} \t{i % 2}\n" for i in range(30)))
    (root / "sst2" / "dev.tsv").write_text(
        "sentence\tlabel\na fine film 1 \t1\nnew dev line \t0\n")
    (root / "tweet_sentiment_extraction").mkdir()
    rows = "".join(f'id{i},"so, {s} day {i}",{s},{s}\n' for i, s in enumerate(
        ["positive", "neutral", "negative"] * 10))
    (root / "tweet_sentiment_extraction" / "train.csv").write_text(
        "textID,text,selected_text,sentiment\n" + rows + "x,,,negative\n")
    (root / "tweet_sentiment_extraction" / "test.csv").write_text(
        "textID,text,sentiment\nt1,\"so, positive day 0\",positive\nt2,other day,negative\n"
        "t3,meh,neutral\n")


def test_both_datasets_read_into_one_label_vocabulary(tmp_path: Path) -> None:
    write_pair(tmp_path)
    sst2 = read_split(tmp_path, "sst2", "train")
    assert sst2[0] == Example('a "fine" film 0', "negative") and sst2[1].label == "positive"
    tweets = read_split(tmp_path, "tweets", "train")
    # Neutral tweets and the empty one are left out; the quoted comma stays in the text.
    assert len(tweets) == 20 and {row.label for row in tweets} == {"negative", "positive"}
    assert tweets[0] == Example("so, positive day 0", "positive")


def test_evaluation_rows_never_overlap_what_was_trained_or_sent(tmp_path: Path) -> None:
    write_pair(tmp_path)
    data = prepare(LoopOptions(data_root=tmp_path, train_rows=10, test_rows=5,
                               traffic_rows=20, feedback_rows=5, eval_rows=5))
    sent = {row.text for row in data.traffic}
    assert len(data.traffic) == 20 and "so, positive day 0" in sent
    assert [row.text for row in data.eval_new] == ["other day"]  # the sent tweet is left out
    trained = {row.text for row in data.train}
    assert not trained & {row.text for row in data.test}
    with pytest.raises(LoopError, match="must be different"):
        prepare(LoopOptions(data_root=tmp_path, source="sst2", target="sst2"))
    with pytest.raises(LoopError, match="cannot exceed"):
        prepare(LoopOptions(data_root=tmp_path, traffic_rows=10, feedback_rows=11))
    assert distinct([Example("A b", "x"), Example("a B", "y")], []) == [Example("A b", "x")]


def test_wilson_interval_matches_the_textbook_values() -> None:
    low, high = wilson(8, 10)
    assert math.isclose(low, 0.4902, abs_tol=1e-4) and math.isclose(high, 0.9433, abs_tol=1e-4)
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0
    accuracy = Accuracy.of([True] * 830 + [False] * 170)
    assert accuracy.value == 0.83 and accuracy.low < 0.83 < accuracy.high
    assert accuracy.high - accuracy.low < 0.05  # 1,000 examples: about ±2.3 points


def test_paired_bootstrap_interval_covers_the_difference_and_excludes_zero_when_clear() -> None:
    a = [True] * 60 + [False] * 40
    same = paired_difference(a, a)
    assert same.value == same.low == same.high == 0.0
    better = [True] * 90 + [False] * 10  # wins 30 of a's 40 misses, loses none
    clear = paired_difference(a, better)
    assert math.isclose(clear.value, 0.30) and 0.0 < clear.low < 0.30 < clear.high
    with pytest.raises(ValueError, match="same"):
        paired_difference(a, a[:-1])


def test_markdown_shows_both_versions_the_difference_and_the_gate() -> None:
    acc = {"examples": 1000, "correct": 640, "value": 0.64, "low": 0.61, "high": 0.669}
    cand = {"examples": 1000, "correct": 780, "value": 0.78, "low": 0.754, "high": 0.804}
    report = {
        "pair": {"source": "sst2", "target": "tweets"}, "trigger": "alertmanager",
        "feedback": {"posted": 1500, "accepted": 1500},
        "run": {"id": "r1", "status": "finished", "decision": "promoted",
                "candidate_version": "2", "reason": "new traffic ...: version 2 promoted",
                "gate_metric": "accuracy",
                "data": {"heldout": {"new_traffic": 450, "original": 400},
                         "original_train": 2000, "feedback_train": 1050,
                         "feedback_holdout": 450, "train_total": 3150,
                         "mix": {"start": "active version", "replay_ratio": 1.0,
                                 "feedback_repeat": 2}},
                "evaluations": {"active": {"new_traffic/accuracy": 0.63,
                                           "original/accuracy": 0.87},
                                "candidate": {"new_traffic/accuracy": 0.77,
                                              "original/accuracy": 0.86}}},
        "evaluation": {"new_traffic": {"1": acc, "2": cand, "difference": {
            "value": 0.14, "low": 0.11, "high": 0.17}}},
        "timings": {"train_s": 222.4},
    }
    table = markdown(report)
    assert "**promoted**" in table
    assert ("| new traffic: tweets test split (never sent before) | 1000 | 64.0 % (61.0–66.9) "
            "| 78.0 % (75.4–80.4) | +14.0 (+11.0 .. +17.0) |") in table
    assert "| new_traffic | 450 | 0.6300 | 0.7700 |" in table
    assert "| original | 400 | 0.8700 | 0.8600 |" in table
    assert "replay ratio 1.0, feedback repeat 2" in table and "train 222 s" in table
