"""tunesmith: plan, clean, train, evaluate, export and serve fine-tuned models."""

__version__ = "0.1.0"
