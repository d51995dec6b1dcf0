"""OpenAI-compatible HTTP serving: FastAPI app, micro-batching worker, adapter registry."""
