"""Benchmark suites and the evaluation runner (resumable, sharded, self-describing results)."""
