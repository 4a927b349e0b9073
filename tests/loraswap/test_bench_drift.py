"""``loraswap bench drift``: the figures (ratios, percentiles, paired interval), the round
order, and one tiny run of the three servers end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from loraswap.bench.drift_overhead import main
from loraswap.bench.drift_report import (
    ArmRounds,
    markdown_table,
    paired_ratio,
    percentile,
    round_order,
    summarize,
)
from tests.conftest import write_classifier_adapter


def arm(name: str, rounds: list[tuple[list[float], float]]) -> ArmRounds:
    out = ArmRounds(name)
    for latencies, seconds in rounds:
        out.add_round(latencies, seconds)
    return out


def test_every_arm_takes_every_position_in_turn() -> None:
    arms = ["off", "on", "on-capture"]
    orders = [round_order(arms, i) for i in range(6)]
    assert orders[:3] == [["off", "on", "on-capture"], ["on", "on-capture", "off"],
                          ["on-capture", "off", "on"]]
    assert orders[3:] == orders[:3]


def test_ratios_against_off_and_the_paired_interval() -> None:
    off = arm("off", [([0.1, 0.2, 0.3], 1.0), ([0.1, 0.2, 0.3], 1.0)])
    slower = arm("on", [([0.11, 0.22, 0.33], 1.1), ([0.11, 0.22, 0.33], 1.1)])
    summaries = {s.name: s for s in summarize([off, slower])}
    assert summaries["off"].p50_ratio == 1 and summaries["off"].throughput_ratio == 1
    on = summaries["on"]
    assert (on.requests, on.p50_ms, on.p99_ms) == (6, 220.0, 330.0)
    assert on.p50_ratio == pytest.approx(1.1) and on.p99_ratio == pytest.approx(1.1)
    assert on.throughput_ratio == pytest.approx(1 / 1.1, abs=1e-4)
    assert on.paired_p50_ratio == pytest.approx(1.1)
    # Identical rounds: no spread, the interval is the point.
    assert on.paired_rps_low == on.paired_rps_ratio == on.paired_rps_high
    table = markdown_table(list(summaries.values()))
    assert "| on | 6 | 220.0 | 330.0 | 2.73 | +10.0 % | +10.0 % | -9.1 % | +10.0 % " in table
    assert "-9.1 % (-9.1 % .. -9.1 %)" in table


def test_the_paired_interval_widens_with_noise_and_covers_its_mean() -> None:
    ratio, low, high = paired_ratio([1.02, 0.98, 1.05, 0.95], [1.0, 1.0, 1.0, 1.0])
    assert low < ratio < high and low < 1 < high
    assert math.log(high / ratio) == pytest.approx(math.log(ratio / low))
    tight = paired_ratio([1.01, 0.99, 1.01, 0.99], [1.0, 1.0, 1.0, 1.0])
    assert tight[2] - tight[1] < high - low


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.5) == 50.0
    assert percentile([3.0], 0.99) == 3.0


@pytest.mark.integration
def test_one_tiny_run_of_the_three_servers(tiny_base_dir: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    package = write_classifier_adapter(tiny_base_dir, tmp_path / "pkg", task="seq-cls",
                                       labels=["negative", "positive"], seed=1)
    data = tmp_path / "texts.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"a film number {i}\t1\n" for i in range(20)))
    for name, value in {"LORASWAP_BASE_MODEL": str(tiny_base_dir),
                        "LORASWAP_QUANTIZATION": "fp32", "LORASWAP_DEVICE": "cpu",
                        "LORASWAP_MAX_MODEL_LEN": "256",
                        "LORASWAP_MAX_INPUT_TOKENS": "128"}.items():
        monkeypatch.setenv(name, value)
    app = typer.Typer()
    app.command()(main)
    out = tmp_path / "drift.json"
    result = CliRunner().invoke(app, [
        "--package", str(package), "--data", str(data), "--rounds", "2", "--per-round", "5",
        "--concurrency", "2", "--warmup", "2", "--control", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [a["name"] for a in report["arms"]] == ["off", "on", "on-capture", "off-b"]
    assert all(a["requests"] == 10 for a in report["arms"])
    # Every on-capture request captured (warm-up included), nothing of the others.
    assert report["capture"]["acme_rows"] == report["expected_captured_rows"] == 12
    assert report["capture"]["quiet_rows"] == 0
    # Batches, not one object per captured input (12 inputs, written every few seconds).
    assert 1 <= report["capture"]["index_objects"] <= report["capture"]["batch_objects"] + 1
    assert report["capture"]["batch_objects"] < 12
    assert "| on-capture | 10 |" in result.output and "torch capability" in result.output
    # The drift arms scored every input they got (read from /metrics with its credential:
    # without it the bench reported no series and could not show that drift did any work).
    for arm in ("on", "on-capture"):
        windows = [v for k, v in report["drift_series"][arm].items()
                   if k.startswith("loraswap_drift_window_samples{")]
        assert windows and max(windows) == 12, (arm, report["drift_series"])
