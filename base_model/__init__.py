"""The base model: which families are served, its precision, loading it and provisioning it."""
