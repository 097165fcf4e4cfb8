"""Benchmark evaluation: loading problems, generating answers, grading, and metrics."""
