"""Evaluation: measure a model, base against tuned."""
