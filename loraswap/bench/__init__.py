"""Benchmarks of the multi-LoRA engine against naive and batched PEFT serving.

``loraswap bench`` (see :mod:`loraswap.bench_cmd`) runs them; the modules here hold the
workload (:mod:`.workload`), the in-process engine runs (:mod:`.engine_bench`), the PEFT
baselines (:mod:`.peft_baselines`), the OpenAI-compatible HTTP client (:mod:`.http_bench`)
and the tables (:mod:`.report`).
"""
