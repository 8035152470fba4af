"""Benchmarks and the fixtures they share (the simulated internet lives in ``simnet``)."""
