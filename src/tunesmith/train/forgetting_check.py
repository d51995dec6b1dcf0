"""The forgetting check: perplexity on general text before and after training.

Tuning on narrow data can cost general language skill (catastrophic forgetting). The check
scores the same general documents with the base model, before any training, and with the tuned
model at the end; summary.json["forgetting"] holds both and the relative change.
"""

from __future__ import annotations

from tunesmith.config.schema import ForgettingEvalConfig
from tunesmith.data.dataset import RejectSink
from tunesmith.data.pretrain import read_documents
from tunesmith.data.registry import TEXT, Source
from tunesmith.models.perplexity import Perplexity, perplexity
from tunesmith.utils.console import console
from tunesmith.utils.errors import ConfigError


class ForgettingCheck:
    def __init__(self, cfg: ForgettingEvalConfig, reject: RejectSink | None = None):
        """Reads the documents at once, so a bad file stops the run before the model loads."""
        self.cfg = cfg
        source = Source(list(cfg.data), TEXT, {TEXT: cfg.text_column})
        documents, self.read_stats = read_documents([source], "stop", reject)
        if not documents:
            raise ConfigError(f"train.forgetting_eval.data: no non-empty documents in {cfg.data}")
        self.texts = [d.text for d in documents[: cfg.max_docs]]
        self.base: Perplexity | None = None

    def before(self, model, tokenizer) -> None:
        """Score the base model (call before the method wraps it and training starts)."""
        self.base = self._score(model, tokenizer)

    def after(self, model, tokenizer) -> dict:
        """Score the tuned model; returns the summary entry and prints one line."""
        if self.base is None:
            raise RuntimeError("ForgettingCheck.after() called before before()")
        tuned = self._score(model, tokenizer)
        change = (tuned.perplexity - self.base.perplexity) / self.base.perplexity
        console.print(
            f"forgetting: perplexity on {tuned.documents} general documents "
            f"{self.base.perplexity:.3f} -> {tuned.perplexity:.3f} ({change:+.1%})"
        )
        return {
            "data": list(self.cfg.data),
            "read": self.read_stats["read"],
            "rejected": self.read_stats["rejected"],
            "documents": tuned.documents,
            "tokens": tuned.tokens,
            "truncated_documents": tuned.truncated,
            "max_length": self.cfg.max_length,
            "base_perplexity": self.base.perplexity,
            "tuned_perplexity": tuned.perplexity,
            "relative_change": change,
        }

    def _score(self, model, tokenizer) -> Perplexity:
        return perplexity(model, tokenizer, self.texts, self.cfg.max_length, self.cfg.batch_size)
