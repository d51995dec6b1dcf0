"""Settings of the classification stage (train.stage: cls).

The model is any encoder or decoder that AutoModelForSequenceClassification can load; the
embedded encoder is `model.name_or_path=minilm-l6`. Data files go in data.train / data.eval.
Tokens per text (pair) are data.cutoff_len, capped at the tokenizer's model_max_length; the
former key train.cls.max_length is a deprecated alias of data.cutoff_len (config/load.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tunesmith.config.base import Section, listed_once


class ClsConfig(Section):
    text_column: str = "text"
    text_pair_column: str | None = Field(
        None, description="Second text of a pair (NLI, matching); None: single texts."
    )
    label_column: str = "label"
    labels: list[str] | None = Field(
        None,
        description="The label names in id order (an integer label in the data is an index into "
        "this list); None: the sorted labels of the training data.",
    )
    multi_label: bool = Field(
        False, description="Each record holds a list of labels (or a delimited string)."
    )
    label_delimiter: str = Field(",", min_length=1, description="Splits a multi-label string.")
    threshold: float = Field(0.5, gt=0, lt=1, description="Multi-label: sigmoid above it is on.")
    head: Literal["standard", "seed"] = Field(
        "standard",
        description="standard: the model's own head; seed: Dropout, Linear H->H/2, ReLU, "
        "Dropout, Linear H/2->labels (replaces a single-Linear head, BERT or Llama style).",
    )
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout of the seed head.")
    class_weights: Literal["none", "balanced"] | dict[str, float] = Field(
        "none",
        description="Loss weights: balanced (n / (classes x count)), or {label: weight} "
        "(others 1.0); multi-label: BCE pos_weight (balanced: negatives / positives).",
    )
    long_text: Literal["auto", "head", "head_tail", "chunk"] = Field(
        "auto",
        description="Texts longer than the model takes: head keeps the start; head_tail keeps "
        "head_share of the tokens from the start and the rest from the end; chunk splits the "
        "text into overlapping windows, trains on each with the text's label and averages "
        "their logits to predict. auto picks from the training texts' lengths: head when at "
        "most 10% are too long, chunk when over half of all tokens would be cut, else "
        "head_tail. Text pairs always keep their heads.",
    )
    head_share: float = Field(
        0.25, gt=0, lt=1, description="head_tail: the share of the token budget from the start."
    )
    chunk_overlap: int = Field(
        64, ge=0, description="chunk: tokens a window repeats from the one before."
    )
    max_chunks: int = Field(
        8, ge=1, description="chunk: windows per text at most, evenly spread over it."
    )
    val_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Stratified share of the training data held out for validation when no "
        "data.eval is given; 0: no validation.",
    )

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if len(value) < 2:
                raise ValueError("give at least two labels")
            listed_once(value, "labels")
        return value

    @field_validator("class_weights")
    @classmethod
    def _positive_weights(cls, value: str | dict[str, float]) -> str | dict[str, float]:
        if isinstance(value, dict):
            bad = [name for name, weight in value.items() if not weight > 0]
            if bad:
                raise ValueError(f"class weights must be > 0 (got {', '.join(bad)})")
        return value
