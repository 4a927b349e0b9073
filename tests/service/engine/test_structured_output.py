"""Structured output in the engine: every constrained generation parses and validates
against its schema, whatever the seed and adapter; free rows of the same batch get exactly
the tokens they get alone; schemas the grammar engine cannot enforce are refused by name."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from transformers import AutoTokenizer

from loraswap.adapters.lora_format import read_lora_adapter
from loraswap.core.identity import AdapterVersionRef
from loraswap.service.engine.engine import LoraEngine
from loraswap.service.engine.grammar import GrammarCompiler, GrammarSpec
from loraswap.service.engine.requests import GenerationEvent, GenerationRequest
from loraswap.service.engine.sampling import SamplingParams
from loraswap.service.errors import UnsupportedSchemaError
from tests.utils.engine import make_engine

NAME = {"type": "string", "minLength": 1, "maxLength": 8}
SCHEMAS: dict[str, dict[str, Any]] = {
    "nested": {
        "type": "object",
        "properties": {"user": {"type": "object", "properties": {
            "name": NAME, "address": {"type": "object", "properties": {"city": NAME},
                                      "required": ["city"], "additionalProperties": False}},
            "required": ["name", "address"], "additionalProperties": False},
            "active": {"type": "boolean"}},
        "required": ["user", "active"], "additionalProperties": False},
    "array": {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": NAME, "minItems": 1, "maxItems": 4},
                       "ids": {"type": "array", "items": {"type": "integer", "minimum": 0,
                                                          "maximum": 999}, "maxItems": 3}},
        "required": ["tags", "ids"], "additionalProperties": False},
    "enum": {
        "type": "object",
        "properties": {"label": {"enum": ["positive", "negative", "neutral"]},
                       "lang": {"type": "string", "enum": ["en", "fr"]}},
        "required": ["label", "lang"], "additionalProperties": False},
    "bounded": {
        "type": "object",
        "properties": {"age": {"type": "integer", "minimum": 18, "maximum": 99},
                       "score": {"type": "number", "minimum": -1, "maximum": 1,
                                 "multipleOf": 0.25},
                       "count": {"type": "integer", "exclusiveMinimum": 0, "maximum": 5}},
        "required": ["age", "score", "count"], "additionalProperties": False},
}


async def generate(engine: LoraEngine, prompt: list[int], params: SamplingParams, rid: str,
                   adapter: tuple[str, Path] | None = None) -> GenerationEvent:
    key = weights = None
    if adapter is not None:
        key = AdapterVersionRef.parse(f"{adapter[0]}@1")
        folder = adapter[1]
        weights = await engine.adapter_weights(key, lambda: read_lora_adapter(folder))
    return await engine.submit(GenerationRequest(
        request_id=rid, prompt_ids=prompt, params=params, adapter=key,
        adapter_weights=weights)).collect()


def check_valid(result: GenerationEvent, schema: dict[str, Any] | None) -> None:
    assert result.finish_reason == "stop", (result.finish_reason, result.text)
    value = json.loads(result.text)
    if schema is None:
        assert isinstance(value, dict)
    else:
        jsonschema.validate(value, schema)


async def test_seeded_generations_parse_and_validate(tiny_base_dir: Path,
                                                     make_adapter) -> None:  # type: ignore[no-untyped-def]
    """200 sampled generations (4 schemas, 25 seeds, the base and two adapters, plus greedy
    rows) all end by themselves, parse, and validate with ``jsonschema``."""
    adapters = [None, ("a", make_adapter("a", rank=4, seed=1)),
                ("b", make_adapter("b", rank=8, seed=2))]
    compiler = GrammarCompiler(AutoTokenizer.from_pretrained(tiny_base_dir))
    grammars = {name: compiler.compile(GrammarSpec.json_schema(s))
                for name, s in SCHEMAS.items()}
    engine = make_engine(tiny_base_dir, max_batch_size=32, max_model_len=320)
    jobs = []
    for index, (name, grammar) in enumerate(
            [(n, g) for n, g in grammars.items() for _ in range(50)]):
        temperature = 0.0 if index % 25 == 0 else 1.0
        params = SamplingParams(max_new_tokens=300, temperature=temperature, seed=index,
                                grammar=grammar)
        jobs.append((name, [5 + index % 7, 9, 11], params, adapters[index % 3]))
    engine.start()
    try:
        results = await asyncio.gather(*(generate(engine, prompt, params, f"r{i}", adapter)
                                         for i, (_, prompt, params, adapter) in enumerate(jobs)))
    finally:
        engine.stop()
    assert len(results) == 200
    for (name, *_), result in zip(jobs, results, strict=True):
        check_valid(result, SCHEMAS[name])
    assert len({r.text for r in results}) > 100  # sampled: not one answer repeated


async def test_free_rows_get_their_solo_tokens_beside_constrained_rows(
        tiny_base_dir: Path) -> None:
    """Greedy and seeded free rows batched with constrained rows produce exactly the
    tokens they produce alone."""
    compiler = GrammarCompiler(AutoTokenizer.from_pretrained(tiny_base_dir))
    schema = compiler.compile(GrammarSpec.json_schema(SCHEMAS["nested"]))
    enum = compiler.compile(GrammarSpec.json_schema(SCHEMAS["enum"]))
    free = [SamplingParams(max_new_tokens=24, ignore_eos=True),
            SamplingParams(max_new_tokens=24, ignore_eos=True, temperature=0.9, seed=4),
            SamplingParams(max_new_tokens=24, ignore_eos=True, temperature=1.0, top_k=20,
                           seed=5)]
    prompts = [[5, 6, 7], [20, 21], [30, 31, 32, 33]]
    engine = make_engine(tiny_base_dir, max_batch_size=16)
    engine.start()
    try:
        alone = [await generate(engine, p, s, f"solo{i}")
                 for i, (p, s) in enumerate(zip(prompts, free, strict=True))]
        constrained = [SamplingParams(max_new_tokens=200, temperature=1.0, seed=i,
                                      grammar=schema if i % 2 else enum)
                       for i in range(6)]
        mixed = await asyncio.gather(
            *(generate(engine, [8, 9, 10 + i], s, f"c{i}") for i, s in enumerate(constrained)),
            *(generate(engine, p, s, f"free{i}")
              for i, (p, s) in enumerate(zip(prompts, free, strict=True))))
    finally:
        engine.stop()
    for solo, together in zip(alone, mixed[len(constrained):], strict=True):
        assert together.token_ids == solo.token_ids
    for i, result in enumerate(mixed[: len(constrained)]):
        check_valid(result, SCHEMAS["nested"] if i % 2 else SCHEMAS["enum"])


def test_unsupported_or_oversized_schemas_are_refused_by_name(tiny_base_dir: Path) -> None:
    compiler = GrammarCompiler(AutoTokenizer.from_pretrained(tiny_base_dir))
    with pytest.raises(UnsupportedSchemaError, match="not"):
        compiler.compile(GrammarSpec.json_schema({"not": {"type": "string"}}))
    with pytest.raises(UnsupportedSchemaError, match="uniqueItems"):
        compiler.compile(GrammarSpec.json_schema({"type": "array", "uniqueItems": True}))
    huge = {"type": "object", "properties": {
        f"p{i}": {"enum": [f"value{j}-{i}" for j in range(60)]} for i in range(100)}}
    with pytest.raises(UnsupportedSchemaError, match="characters"):
        compiler.compile(GrammarSpec.json_schema(huge))


def test_hostile_schema_compiles_or_fails_fast(tiny_base_dir: Path) -> None:
    """A schema just under the size limit built to blow up grammar size, and a regex whose
    DFA is exponential, each take well under a second to compile or refuse; the cache
    keeps one compilation per schema and stays bounded."""
    compiler = GrammarCompiler(AutoTokenizer.from_pretrained(tiny_base_dir), cache_size=2)
    hostile = [
        {"type": "object", "properties": {
            f"p{i}": {"anyOf": [{"enum": [f"v{j}-{i}" for j in range(40)]},
                                {"type": "array", "items": {"$ref": "#"}}]}
            for i in range(60)}},
        {"type": "string", "pattern": "^(a|b)*a(a|b){40}$"},
    ]
    for schema in hostile:
        start = time.perf_counter()
        with contextlib.suppress(UnsupportedSchemaError):
            compiler.compile(GrammarSpec.json_schema(schema)).start().allowed()
        assert time.perf_counter() - start < 1.0
    spec = GrammarSpec.json_schema(SCHEMAS["enum"])
    assert compiler.compile(spec) is compiler.compile(spec)
    compiler.compile(GrammarSpec.json_schema(SCHEMAS["array"]))
    compiler.compile(GrammarSpec("json_object"))
    assert compiler.cached == 2


async def test_real_model_answers_json_object_and_schema(real_model_dir: Path) -> None:
    """SmolLM2 (49k vocabulary) asked for JSON: greedy and sampled answers under
    ``json_object`` and under a schema all end by themselves, parse and validate."""
    tokenizer = AutoTokenizer.from_pretrained(real_model_dir)
    compiler = GrammarCompiler(tokenizer)
    person = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 20},
                    "maxItems": 3}},
        "required": ["name", "age", "hobbies"], "additionalProperties": False}
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Describe a person as JSON with name, age, hobbies."}],
        add_generation_prompt=True, tokenize=True, return_dict=False)
    engine = make_engine(real_model_dir, max_model_len=512)
    jobs = [(schema, SamplingParams(
        max_new_tokens=200, temperature=0.0 if seed == 0 else 0.7, seed=seed,
        grammar=compiler.compile(GrammarSpec.json_schema(schema) if schema
                                 else GrammarSpec("json_object"))))
        for schema in (person, None) for seed in range(3)]
    engine.start()
    try:
        results = await asyncio.gather(*(generate(engine, list(prompt), params, f"r{i}")
                                         for i, (_, params) in enumerate(jobs)))
    finally:
        engine.stop()
    for (schema, _), result in zip(jobs, results, strict=True):
        check_valid(result, schema)
