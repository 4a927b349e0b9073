"""Helpers shared by the test packages (clocks, engines, gates); no fixtures live here."""
