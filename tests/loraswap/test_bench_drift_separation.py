"""``loraswap bench drift-separation``: traffic specs and the report table."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from loraswap.bench.drift_separation import markdown, read_traffic


def test_traffic_spec_reads_the_named_column_of_tsv_and_csv(tmp_path: Path) -> None:
    tsv = tmp_path / "held.tsv"
    tsv.write_text('sentence\tlabel\na "quoted" film\t1\n\t0\nbad\t0\nfine\t1\n')
    csv_file = tmp_path / "other.csv"
    csv_file.write_text('id,text\n1,"hello, world"\n2,bye\n')
    held = read_traffic(f"held={tsv}:sentence", 3)
    assert held.name == "held" and held.texts == ['a "quoted" film', "bad", "fine"]
    other = read_traffic(f"other={csv_file}:text", 2)
    assert other.texts == ["hello, world", "bye"]


@pytest.mark.parametrize("spec", ["no-equals", "name=path-without-column", "=x.tsv:text"])
def test_malformed_traffic_spec_is_refused_by_name(spec: str) -> None:
    with pytest.raises(typer.BadParameter, match="NAME=PATH:COLUMN"):
        read_traffic(spec, 1)


def test_a_missing_column_or_too_few_rows_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "d.tsv"
    data.write_text("sentence\tlabel\none\t1\n")
    with pytest.raises(typer.BadParameter, match="no column 'text'"):
        read_traffic(f"d={data}:text", 1)
    with pytest.raises(typer.BadParameter, match="has 1 texts, the window needs 5"):
        read_traffic(f"d={data}:sentence", 5)


def test_markdown_has_a_row_per_source_and_a_dash_for_absent_scores() -> None:
    table = markdown({"held": {"scores": {"input_length/psi": 0.0291}},
                      "tweets": {"scores": {"input_length/psi": 0.66, "embedding/mmd": 0.14}}})
    lines = table.splitlines()
    assert lines[0] == "| traffic | embedding/mmd | input_length/psi |"
    assert lines[2] == "| held | – | 0.029 |"
    assert lines[3] == "| tweets | 0.140 | 0.660 |"
