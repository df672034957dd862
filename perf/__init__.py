"""Benchmarks and the latency harness."""
