"""Data reading, seeded splits, token-label alignment and config files."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from loraswap.adapters.package import TaskKind
from loraswap.adapters.words import SplitText
from loraswap.core.errors import ConfigurationError
from loraswap.training.config import build_config, read_config_file
from loraswap.training.data import (
    ChatExample,
    TextExample,
    TokenExample,
    label_names,
    load_examples,
    read_conll,
    split_examples,
)
from loraswap.training.tasks import IGNORE, encode_chat, encode_words


def test_conll_reader_splits_sentences_and_keeps_tags(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    path.write_text("the\tO\nadenomatous\tB-Disease\npolyposis\tI-Disease\n\n\n"
                    "-DOCSTART-\tO\n\nfine\tO\n", encoding="utf-8")
    sentences = read_conll(path)
    assert sentences == [TokenExample(["the", "adenomatous", "polyposis"],
                                      ["O", "B-Disease", "I-Disease"]),
                         TokenExample(["fine"], ["O"])]
    # A .tsv for token-cls is CoNLL, not a table.
    assert load_examples(path, TaskKind.TOKEN_CLS) == sentences


def test_conll_line_without_tag_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.conll"
    path.write_text("the\tO\nlonely\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"bad\.conll:2"):
        read_conll(path)


def test_seeded_split_is_reproducible_and_disjoint() -> None:
    items = list(range(100))
    train, val = split_examples(items, 0.2, seed=7)
    assert len(val) == 20 and len(train) == 80
    assert sorted(train + val) == items
    assert split_examples(items, 0.2, seed=7) == (train, val)
    assert split_examples(items, 0.2, seed=8)[1] != val


def test_tables_map_columns_and_drop_empty_rows(tmp_path: Path) -> None:
    path = tmp_path / "tweets.csv"
    path.write_text('textID,text,sentiment\na,"hello, world",positive\nb,,neutral\n'
                    'c,sad day,negative\n', encoding="utf-8")
    examples = load_examples(path, TaskKind.SEQ_CLS, label_column="sentiment")
    assert examples == [TextExample("hello, world", "positive"), TextExample("sad day",
                                                                             "negative")]
    with pytest.raises(ConfigurationError, match="'label'"):
        load_examples(path, TaskKind.SEQ_CLS)


def test_glue_tsv_keeps_bare_quotes(tmp_path: Path) -> None:
    path = tmp_path / "sst.tsv"
    path.write_text('sentence\tlabel\nit \'s a " quoted " film \t1\n', encoding="utf-8")
    [example] = load_examples(path, TaskKind.SEQ_CLS, text_column="sentence")
    assert example == TextExample('it \'s a " quoted " film', "1")


def test_alpaca_and_chat_records_become_conversations(tmp_path: Path) -> None:
    path = tmp_path / "sft.jsonl"
    path.write_text('{"instruction": "Add", "input": "2+2", "output": "4"}\n'
                    '{"messages": [{"role": "user", "content": "hi"},'
                    ' {"role": "assistant", "content": "hello"}]}\n', encoding="utf-8")
    first, second = load_examples(path, TaskKind.CAUSAL_LM)
    assert first == ChatExample([{"role": "user", "content": "Add\n\n2+2"},
                                 {"role": "assistant", "content": "4"}])
    assert isinstance(second, ChatExample) and second.messages[-1]["content"] == "hello"


def test_tag_labels_put_o_first_and_add_inside_tags() -> None:
    examples = [TokenExample(["a", "b"], ["B-Gene", "O"])]
    assert label_names(TaskKind.TOKEN_CLS, examples, None) == ["O", "B-Gene", "I-Gene"]


def test_every_sub_token_is_labelled_and_words_start_once(tiny_base_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base_dir))
    labels = ["O", "B-Disease", "I-Disease"]
    example = TokenExample(["the", "zzqxv", "dog"], ["O", "B-Disease", "O"])
    encoded = encode_words(tokenizer, example, {n: i for i, n in enumerate(labels)}, 64)
    pieces = tokenizer(" ".join(example.tokens))["input_ids"]
    assert encoded.input_ids == pieces  # same tokens as tokenizer(raw text) at serving time
    assert len(encoded.word_starts) == 3 and encoded.word_tags == example.tags
    start, end = encoded.word_starts[1], encoded.word_starts[2]
    assert end - start > 1, "the made-up word should split into several tokens"
    assert isinstance(encoded.labels, list)
    assert encoded.labels[start] == 1  # B- on the first sub-token
    assert set(encoded.labels[start + 1:end]) == {2}  # I- on the following ones
    assert encoded.labels[end] == 0


def test_corpus_words_are_split_like_the_service_splits_raw_text(tiny_base_dir: Path) -> None:
    """A corpus that keeps "A-T(" as one word trains on "A - T (", the rendering the
    service gives "A-T(" in a request; the word's tag spreads over its pieces."""
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base_dir))
    labels = ["O", "B-Disease", "I-Disease"]
    example = TokenExample(["with", "A-T(", "today"], ["O", "B-Disease", "O"])
    encoded = encode_words(tokenizer, example, {n: i for i, n in enumerate(labels)}, 64)
    served = SplitText.of("with A-T( today")
    assert served.joined == "with A - T ( today"
    assert encoded.input_ids == tokenizer(served.joined)["input_ids"]
    assert len(encoded.word_starts) == 3 and encoded.word_tags == example.tags
    start, end = encoded.word_starts[1], encoded.word_starts[2]
    assert isinstance(encoded.labels, list)
    assert encoded.labels[start] == 1
    assert set(encoded.labels[start + 1:end]) - {IGNORE} == {2}  # bare spaces: no label
    assert sum(label == 2 for label in encoded.labels[start + 1:end]) >= 3  # -, T, (
    assert encoded.labels[end] == 0


def test_sft_loss_covers_only_the_response(tiny_base_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_base_dir))
    chat = ChatExample([{"role": "user", "content": "name three primary colors"},
                        {"role": "assistant", "content": "red, yellow and blue"}])
    encoded = encode_chat(tokenizer, chat, 256)
    assert isinstance(encoded.labels, list)
    trained = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True)
               if label != IGNORE]
    assert tokenizer.decode(trained).startswith("red, yellow and blue<|im_end|>")
    prompt = tokenizer.apply_chat_template(chat.messages[:1], tokenize=False,
                                           add_generation_prompt=True)
    assert tokenizer.decode(encoded.input_ids).startswith(prompt)


def test_yaml_config_resolves_relative_paths_and_flags_win(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "train.yaml"
    path.parent.mkdir()
    path.write_text("task: seq-cls\ndata: data.csv\noutput: out\nepochs: 2\n"
                    "lora:\n  r: 4\n", encoding="utf-8")
    cfg = build_config(read_config_file(path), {"epochs": 5.0, "lora_alpha": 8.0})
    assert cfg.data == path.parent / "data.csv"
    assert (cfg.epochs, cfg.lora.r, cfg.lora.alpha) == (5.0, 4, 8.0)


def test_invalid_settings_name_the_field() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown LoRA target.*qproj"):
        build_config({}, {"task": "seq-cls", "data": "d.csv", "output": "o",
                          "lora_targets": ["qproj"]})


def test_bidirectional_attention_is_refused_for_generation() -> None:
    with pytest.raises(ConfigurationError, match=r"attention 'bidirectional'.*causal-lm"):
        build_config({}, {"task": "causal-lm", "data": "d.jsonl", "output": "o",
                          "attention": "bidirectional"})
