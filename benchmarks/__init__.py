"""Benchmarks, the top layer: one harness (`harness.py`) and scripts that declare what they compare.

Importable as `rlzoo.benchmarks`; each `bench_*.py` also runs as a script.
"""
