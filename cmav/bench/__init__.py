"""Throughput benchmarks (``cmav bench``)."""
