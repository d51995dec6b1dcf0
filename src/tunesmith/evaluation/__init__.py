"""Evaluation: metrics, judge, robustness, safety and statistics for base vs tuned models."""
