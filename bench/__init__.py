"""Benchmarks that print and save figures side by side with peers (see bench/README.md)."""
