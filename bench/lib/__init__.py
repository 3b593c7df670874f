"""Helpers for bench/render_bench.py: phantom data, HTTP clients, wrk, server runners."""
