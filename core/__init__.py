"""The vocabulary every layer shares: the exception tree and adapter identity (no I/O)."""
