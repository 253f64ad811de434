"""Benchmarks of Messenger against the broker's own ceiling, measured in the same run."""
