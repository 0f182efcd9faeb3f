"""Benchmarks and the GPU check (run as ``python -m bench.<name>``); not part of the service."""
