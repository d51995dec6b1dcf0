"""Export a trained model: merge, save, verify by reloading, model card, GGUF."""
