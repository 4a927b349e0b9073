"""Adapter format, validation, base-model loading: shared by ``service`` and ``training``."""
