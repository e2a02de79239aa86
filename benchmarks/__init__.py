"""Benchmarks: ``python -m benchmarks.run GROUP`` updates that group's section of docs/BENCHMARKS.md."""
