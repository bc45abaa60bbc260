"""Benchmarks: ``python -m bench`` (or ``make bench``) prints tables; figures go in docs/benchmarks.md."""
