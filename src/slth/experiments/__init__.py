"""Experiments and benchmarks built on the library (called by the CLI)."""
