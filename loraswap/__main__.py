"""``python -m loraswap``: the same command line as ``loraswap``."""

from loraswap.cli import app

app(prog_name="loraswap")
