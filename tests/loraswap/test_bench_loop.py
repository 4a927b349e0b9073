"""``loraswap bench loop``: the whole drift loop on real data through a real server, short.

The tiny random base model of the tests (the real-model run is docs/drift.md's), real
SST-2 rows to train on and real tweets as the new traffic, the real Prometheus and
Alertmanager when installed (else the payload they would post), one retraining run; the
report must be coherent whatever the decision.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from loraswap.bench.loop import LoopOptions, run_loop
from loraswap.bench.loop_cmd import QUICK
from loraswap.bench.loop_report import markdown
from tests.monitoring.debian_tools import ensure_binary
from tests.utils.shared_data import shared_data_dir

pytestmark = [pytest.mark.integration]

@pytest.fixture
def data_root() -> Path:
    return shared_data_dir("sst2", "tweet_sentiment_extraction")


def test_quick_loop_reports_a_decision_both_versions_and_both_sets(
        tiny_base_dir: Path, data_root: Path, tmp_path: Path) -> None:
    ensure_binary("prometheus")
    ensure_binary("prometheus-alertmanager")
    options = LoopOptions(data_root=data_root, base_model=tiny_base_dir,
                          trigger="alertmanager", **QUICK)  # type: ignore[arg-type]
    report = run_loop(options, tmp_path)

    run = report["run"]
    assert run["status"] == "finished", run
    assert run["decision"] in ("promoted", "kept") and run["reason"], run
    assert report["trigger"] == "alertmanager"
    assert run["trigger"]["kind"] == "alert" and run["trigger"]["drift_scores"], run
    # Every posted label reached the run: accepted by the service, split train / held out.
    assert report["feedback"] == {"posted": QUICK["feedback_rows"],
                                  "accepted": QUICK["feedback_rows"]}
    data = run["data"]
    assert data["feedback_train"] + data["feedback_holdout"] == QUICK["feedback_rows"]
    assert data["feedback_holdout"] > 0 and data["original_train"] == QUICK["train_rows"]
    assert data["mix"]["start"] == "active version" and data["mix"]["feedback_repeat"] == 2
    # The run record: both scores of both versions, on sets of the recorded sizes.
    for side in ("active", "candidate"):
        scores = run["evaluations"][side]
        for name in ("original", "new_traffic"):
            assert 0.0 <= scores[f"{name}/accuracy"] <= 1.0, scores
            assert scores[f"{name}/examples"] == data["heldout"][name]
    # The bench's own judgement: both versions, both sets, accuracies and intervals sane.
    candidate = str(run["candidate_version"])
    assert candidate == "2"
    for name, size in (("new_traffic", QUICK["eval_rows"]), ("original", QUICK["test_rows"])):
        entry = report["evaluation"][name]
        for version in ("1", candidate):
            acc = entry[version]
            assert acc["examples"] == size
            assert 0.0 <= acc["low"] <= acc["value"] <= acc["high"] <= 1.0, acc
            assert math.isclose(acc["value"], acc["correct"] / size)
        diff = entry["difference"]
        assert math.isclose(diff["value"], entry[candidate]["value"] - entry["1"]["value"],
                            abs_tol=1e-9)
        assert diff["low"] <= diff["value"] <= diff["high"]
    table = markdown(report)
    assert f"**{run['decision']}**" in table and "version 2 (candidate)" in table
