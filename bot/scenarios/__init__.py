"""Bot scenarios: load, stress, soak, failover, concurrency (one module each)."""
