"""The `eval` section: what `tunesmith eval` measures, on which data, against which baseline."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator

from tunesmith.config.base import Section

Task = Literal[
    "generation",  # BLEU, chrF, ROUGE, exact match, length statistics of the replies
    "perplexity",  # response-only perplexity of the reference answers
    "similarity",  # embedding cosine similarity of reply and reference (embedded MiniLM)
    "classification",  # the reply read as a label: accuracy, P/R/F1, confusion matrix
    "instructions",  # rule checks of items that carry a `constraints` list
    "benchmark",  # multiple-choice / GSM8K benchmark file (or the shipped sample)
    "judge",  # LLM-as-judge, rubric or pairwise
    "robustness",  # consistency of replies under perturbed prompts
    "safety",  # refusal rate on the shipped harmful-request probes
    "speed",  # latency p50/p95, tokens/s, peak memory, size on disk
    "tool_calls",  # items offering tools: valid calls, right function, argument match
]
# The names of evaluation/robustness.PERTURBATIONS (config sits below evaluation/).
Perturbation = Literal["typo", "case", "punctuation", "whitespace", "zh_noise", "synonym"]

_as_list = BeforeValidator(lambda v: [v] if isinstance(v, str) else v)


class BenchmarkSettings(Section):
    file: str = Field(
        "sample", description="Multiple-choice or GSM8K-style file; 'sample': the shipped one."
    )
    shots: int = Field(0, ge=0, description="Few-shot examples taken from the file's first items.")
    mode: Literal["loglik", "generate"] = Field(
        "loglik", description="loglik: score each choice; generate: answer, then extract it."
    )
    max_items: int | None = Field(None, ge=1)


class JudgeSettings(Section):
    model: str | None = Field(
        None,
        description="Judge client: local:<model ref> or an OpenAI-compatible URL (#model).",
    )
    mode: Literal["rubric", "pairwise"] = "rubric"
    max_items: int | None = Field(None, ge=1)
    max_new_tokens: int = Field(256, ge=1, description="Length of the judge's verdict.")


class RobustnessSettings(Section):
    perturbations: Annotated[list[Perturbation], _as_list] = Field(
        default_factory=lambda: ["typo", "case", "punctuation", "whitespace"], min_length=1
    )
    max_items: int = Field(50, ge=1, description="Perturb the first N items.")
    seed: int = 0


class BootstrapSettings(Section):
    n_resamples: int = Field(2000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    seed: int = 0


class SafetySettings(Section):
    probes: str | None = Field(None, description="Probe file; None: the shipped probe set.")
    sensitive_words: list[str] = Field(
        default_factory=list, description="Extra words flagged in any reply."
    )


class SpeedSettings(Section):
    requests: int = Field(8, ge=1, description="Single requests timed (after one warm-up).")


class EvalConfig(Section):
    model: str | None = Field(
        None, description="Model to evaluate; default: the run folder's base model (model)."
    )
    adapter: str | None = Field(
        None, description="Adapter, tuned-model or run folder; default: the run folder given."
    )
    baseline: str = Field(
        "base",
        description="Compared model: 'base' (the evaluated model without its adapter), "
        "'none', a model ref, or a run / adapter folder.",
    )
    data: Annotated[list[str], _as_list] = Field(
        default_factory=list,
        description="Test files in any chat format (reference: the last assistant turn); "
        "default: data.eval. Optional columns: category, label, source, constraints.",
    )
    format: Literal["auto", "alpaca", "sharegpt", "openai"] = "auto"
    columns: dict[str, str] = Field(default_factory=dict)
    max_items: int | None = Field(None, ge=1, description="Evaluate the first N items.")
    tasks: Annotated[list[Task], _as_list] = Field(
        default_factory=lambda: ["generation", "perplexity"]
    )
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(16, ge=1)
    engine: Literal["transformers", "vllm"] = "transformers"
    worst_n: int = Field(5, ge=1, description="Worst examples listed per metric.")
    length_buckets: int = Field(4, ge=1, description="Quantile buckets of prompt length.")
    after_train: bool = Field(False, description="`tunesmith train` evaluates when it finishes.")
    benchmark: BenchmarkSettings = Field(default_factory=BenchmarkSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    robustness: RobustnessSettings = Field(default_factory=RobustnessSettings)
    bootstrap: BootstrapSettings = Field(default_factory=BootstrapSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    speed: SpeedSettings = Field(default_factory=SpeedSettings)

    @field_validator("tasks")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @field_validator("baseline")
    @classmethod
    def _baseline_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("use 'base', 'none', a model ref or a run / adapter folder")
        return value.strip()


DATA_TASKS = frozenset(
    {
        "generation",
        "perplexity",
        "similarity",
        "classification",
        "instructions",
        "robustness",
        "tool_calls",
    }
)
