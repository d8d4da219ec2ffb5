"""Benchmarks; each module runs as a script (see README.md)."""
