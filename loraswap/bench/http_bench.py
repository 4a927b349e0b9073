"""The same workload against any OpenAI-compatible server (ours, vLLM) over HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from loraswap.bench.report import RequestTiming, ScenarioResult


def completions_url(base: str) -> str:
    """``http://host:port``, ``.../v1`` or the full endpoint -> the ``/v1/completions`` URL."""
    url = base.rstrip("/")
    if url.endswith("/v1/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/completions"
    return url + "/v1/completions"


def completion_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """A streamed greedy completion of exactly ``max_tokens`` tokens (``ignore_eos`` is the
    vLLM extension, also accepted by loraswap)."""
    return {
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    }


async def timed_completion(client: httpx.AsyncClient, url: str,
                           body: dict[str, Any]) -> RequestTiming:
    """Send one streamed completion; time to the first text chunk and to the end."""
    started = time.perf_counter()
    first: float | None = None
    chunks = 0
    usage_tokens: int | None = None
    async with client.stream("POST", url, json=body) as response:
        if response.status_code >= 400:
            detail = (await response.aread()).decode(errors="replace")[:500]
            raise RuntimeError(f"{url} answered {response.status_code}: {detail}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            usage = event.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                usage_tokens = usage["completion_tokens"]
            choices = event.get("choices") or []
            if choices:
                chunks += 1
                if first is None and choices[0].get("text"):
                    first = time.perf_counter()
    ended = time.perf_counter()
    tokens = usage_tokens if usage_tokens is not None else chunks
    return RequestTiming(ttft_s=(first or ended) - started, latency_s=ended - started,
                         output_tokens=tokens)


async def run_http_async(base_url: str, models: list[str], prompts: list[str], max_tokens: int,
                         concurrency: int, api_key: str | None = None,
                         transport: httpx.AsyncBaseTransport | None = None,
                         timeout_s: float = 900.0) -> ScenarioResult:
    """``concurrency`` closed-loop clients; request ``i`` uses ``models[i % len(models)]``."""
    url = completions_url(base_url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timings: list[RequestTiming | None] = [None] * len(prompts)
    next_index = 0
    async with httpx.AsyncClient(timeout=timeout_s, headers=headers, limits=limits,
                                 transport=transport) as client:

        async def worker() -> None:
            nonlocal next_index
            while next_index < len(prompts):
                index = next_index
                next_index += 1
                body = completion_body(models[index % len(models)], prompts[index], max_tokens)
                timings[index] = await timed_completion(client, url, body)

        # One untimed request first, so that connection setup and server warm-up are not
        # charged to the measurement.
        await timed_completion(client, url, completion_body(models[0], prompts[0], 2))
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(prompts)))))
        wall = time.perf_counter() - started
    used = len({models[i % len(models)] for i in range(len(prompts))})
    return ScenarioResult.from_timings(
        "http", used, [t for t in timings if t is not None], wall,
        note=f"{url}, models {','.join(models)}, {min(concurrency, len(prompts))} clients",
    )


def run_http(base_url: str, models: list[str], prompts: list[str], max_tokens: int,
             concurrency: int, api_key: str | None = None) -> ScenarioResult:
    """Blocking wrapper of :func:`run_http_async`."""
    return asyncio.run(run_http_async(base_url, models, prompts, max_tokens, concurrency,
                                      api_key=api_key))
