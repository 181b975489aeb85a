"""Benchmarks that report figures (events/s, latency percentiles, memory); none asserts a time."""
