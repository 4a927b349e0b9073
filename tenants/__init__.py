"""Tenants, their policies and API keys, stored beside the adapters."""
