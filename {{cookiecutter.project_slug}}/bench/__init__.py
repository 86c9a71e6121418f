"""Benchmarks: absolute figures, printed and written to bench/results/*.json. Not tests."""
