"""Benchmark evaluation: loading problems, generating answers, grading, and metrics."""

PAPER_SAMPLES = 16  # the paper reports Avg@16
PAPER_MAX_NEW_TOKENS = 31744  # the paper's evaluation response limit
TEMPERATURE, TOP_P = 0.6, 0.95  # DeepSeek-R1's recommended sampling for its distilled models (the paper's student)
