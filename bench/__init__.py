"""Benchmarks for ``make bench`` (``python -m bench [name ...]``); see bench/README.md."""
