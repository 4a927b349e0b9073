"""The ``loraswap`` command line: serve, model fetch, bench."""
