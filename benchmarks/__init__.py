"""Benchmarks: each ``*_bench.py`` module measures reliable against a raw baseline in the same run."""
