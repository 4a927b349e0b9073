"""`loraswap serve` validates its options like the variables they override."""

from __future__ import annotations

from typer.testing import CliRunner

from loraswap.cli import app


def test_a_port_out_of_range_is_refused_before_anything_starts() -> None:
    result = CliRunner().invoke(app, ["serve", "--port", "70000"])
    assert result.exit_code == 2
    assert "port" in result.output and "65535" in result.output
