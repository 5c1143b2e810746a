"""Benchmarks of the dcgan service: tools with their own harnesses, outside the library
(`dcgan bench`, `dcgan bench-gpu`; results in docs/benchmarks.md)."""
