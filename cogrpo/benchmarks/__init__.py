"""Benchmark definitions and their official judging rules."""
