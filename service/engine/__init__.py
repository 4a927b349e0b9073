"""Multi-adapter inference engine: slot table, runner, residency tiers, scheduler."""
