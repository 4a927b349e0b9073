"""``loraswap bench`` end to end on the tiny random model: every scenario, tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import typer
from typer.testing import CliRunner

from loraswap.adapters.lora_format import LLAMA_PROJECTIONS, read_lora_adapter
from loraswap.bench.http_bench import completions_url, run_http_async
from loraswap.bench.workload import AdapterSpec, build_prompts, ensure_adapters, parse_targets
from loraswap.bench_cmd import ALL_SCENARIOS, bench

REQUESTS, TOKENS = 4, 4


def test_bench_runs_every_scenario(tiny_base_dir: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(bench)
    report = tmp_path / "bench.json"
    table = tmp_path / "bench.md"
    result = CliRunner().invoke(app, [
        "--base-model", str(tiny_base_dir), "--requests", str(REQUESTS),
        "--max-tokens", str(TOKENS), "--prompt-tokens", "8", "--concurrency", "4",
        "--max-batch-size", "4", "--load-adapters", "3", "--rank", "4", "--alpha", "8",
        "--adapter-dir", str(tmp_path / "adapters"), "--threads", str(torch.get_num_threads()),
        "--json", str(report), "--markdown", str(table), "--precision", "fp32",
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    rows = {row["scenario"]: row for row in data["scenarios"]}
    assert set(rows) == set(ALL_SCENARIOS) - {"load"}
    for name, row in rows.items():
        assert row["requests"] == REQUESTS, name
        assert row["output_tokens"] == REQUESTS * TOKENS, name
        # The figures agree with each other: throughput is the tokens over the scenario's
        # wall time, which holds every request's latency; percentiles are ordered.
        assert row["tokens_per_s"] == pytest.approx(row["output_tokens"] / row["wall_s"]), name
        assert len(row["latencies_s"]) == len(row["ttfts_s"]) == REQUESTS, name
        assert max(row["latencies_s"]) <= row["wall_s"], name
        assert all(t <= lat for t, lat in zip(row["ttfts_s"], row["latencies_s"],
                                               strict=True)), name
        assert 0 < row["mean_ttft_s"] <= row["p99_latency_s"], name
        assert (row["p50_latency_s"] <= row["p90_latency_s"] <= row["p99_latency_s"]
                <= max(row["latencies_s"])), name
    assert rows["base"]["distinct_adapters"] == 0
    assert rows["lora4"]["distinct_adapters"] == 4
    assert rows["lora64"]["distinct_adapters"] == REQUESTS  # round-robin over 4 requests
    load = data["adapter_load"]
    assert len(load["read_s"]) == 3 and load["total_p50_s"] > 0
    markdown = table.read_text()
    assert "ratio vs base" in markdown and "| base | 4 | 0 |" in markdown
    assert "1.00x" in markdown
    for name, row in rows.items():
        ratio = row["tokens_per_s"] / rows["base"]["tokens_per_s"]
        assert f"| {name} | {REQUESTS} | {row['distinct_adapters']} | " \
               f"{row['tokens_per_s']:.1f} | {ratio:.2f}x |" in markdown, name
    assert "copy (host -> slot" in markdown
    # The precision and why, the CPU, and decode against the GEMM peak of the same run.
    assert "Precision: fp32 from --precision" in markdown
    assert "CPU: " in markdown and "torch capability" in markdown
    assert "base decode " in markdown and "GFLOP/s GEMM peak" in markdown
    assert data["meta"]["gemm_peak_gflops"] > 0


def test_bench_rejects_unknown_scenario_before_any_work(tmp_path: Path) -> None:
    """A usage error (exit 2) that names the bad scenario and the valid ones, raised before
    the model is loaded (the folder does not exist) and before any report is written."""
    app = typer.Typer()
    app.command()(bench)
    report = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["--base-model", str(tmp_path / "no-model"),
                                      "--scenarios", "base,nope", "--json", str(report)])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.replace("│", " ").split())
    assert "unknown scenarios ['nope']" in message
    assert all(name in message for name in ALL_SCENARIOS)
    assert not report.exists()


def test_prompts_and_adapters(tiny_base_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base_dir)
    prompts = build_prompts(tokenizer, 5, 12)
    assert all(len(p) == 12 for p in prompts) and len({tuple(p) for p in prompts}) == 5
    assert build_prompts(tokenizer, 5, 12) == prompts
    assert parse_targets("all") == LLAMA_PROJECTIONS
    assert parse_targets("v_proj,q_proj") == ("q_proj", "v_proj")
    with pytest.raises(ValueError, match="unknown targets"):
        parse_targets("q_proj,lm_head")
    spec = AdapterSpec(rank=4, alpha=8, targets=LLAMA_PROJECTIONS)
    folders = ensure_adapters(tmp_path, tiny_base_dir, 2, spec)
    weights = read_lora_adapter(folders[0])
    assert weights.rank == 4 and weights.targets == frozenset(LLAMA_PROJECTIONS)
    assert weights.config.scaling == 2.0
    assert ensure_adapters(tmp_path, tiny_base_dir, 2, spec) == folders  # cached


async def test_http_client_against_fake_server() -> None:
    seen: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        chunks: list[dict[str, Any]] = [{"choices": [{"text": f"t{i}", "index": 0}]}
                                        for i in range(int(body["max_tokens"]))]
        chunks.append({"choices": [], "usage": {"completion_tokens": body["max_tokens"]}})
        text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=text, headers={"content-type": "text/event-stream"})

    result = await run_http_async("http://fake:8000", ["a", "b"], ["p1", "p2", "p3"], 5, 2,
                                  transport=httpx.MockTransport(handler))
    assert result.requests == 3 and result.output_tokens == 15
    assert result.distinct_adapters == 2 and result.tokens_per_s > 0
    timed = seen[1:]  # the first request is the untimed warm-up
    assert [b["model"] for b in timed] == ["a", "b", "a"]
    assert all(b["ignore_eos"] is True and b["temperature"] == 0 for b in timed)
    assert completions_url("http://h:1/v1/") == "http://h:1/v1/completions"


def test_bench_is_one_cli_group_with_train_step(tiny_base_dir: Path) -> None:
    """`loraswap bench train-step` times a training step per precision, naming the CPU."""
    from loraswap.cli import app

    result = CliRunner().invoke(app, [
        "bench", "train-step", "--base-model", str(tiny_base_dir), "--precision", "fp32,auto",
        "--batch-size", "2", "--tokens", "4", "--threads", str(torch.get_num_threads()),
    ])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("| fp32")
            or line.startswith("| bf16")]
    assert len(rows) == 2 and "from --precision" in rows[0]
    assert "torch capability" in result.output
    assert float(rows[0].split("|")[3]) > 0
