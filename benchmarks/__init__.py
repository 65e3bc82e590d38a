"""Benchmarks: the engine against hand-written code doing the same work, as ratios.

Run ``python -m benchmarks [--quick] [--json PATH]``. Every figure is a ratio of interleaved
runs (A B A B ...) measured in the same process, median of the repeats, so that a noisy shared
machine moves both sides alike.
"""
