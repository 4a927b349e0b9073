"""Job and run records in the store: retrain runs, profile jobs, training and reference data."""
