"""Drift monitoring, prediction capture, feedback and the retraining loop (docs/drift.md)."""
