"""Benchmarks: each module times one part of the pipeline against a reference route."""
