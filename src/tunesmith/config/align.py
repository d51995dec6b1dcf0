"""Settings of the preference stages (dpo, orpo, simpo, kto, rm) and of distillation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tunesmith.config.base import Section


class PreferenceConfig(Section):
    """One section for the whole family; each stage reads the keys that apply to it."""

    beta: float = Field(
        0.1,
        gt=0,
        description="dpo/kto: strength of the pull to the reference model (IPO: its tau); "
        "orpo: weight of the odds-ratio term (lambda); simpo: reward scale (2.0 in the paper).",
    )
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = Field(
        "sigmoid",
        description="dpo: sigmoid (DPO), ipo, hinge (SLiC) or robust (label-noise DPO).",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="dpo, loss_type robust: probability that a preference label is flipped.",
    )
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: target reward margin.")
    desirable_weight: float = Field(1.0, gt=0, description="kto: weight of desirable examples.")
    undesirable_weight: float = Field(1.0, gt=0, description="kto: weight of undesirable examples.")
    truncation: Literal["split", "keep_prompt"] = Field(
        "split",
        description="All five stages: how a prompt + answer longer than data.cutoff_len is cut "
        "(truncated records are trained and counted, never rejected). The prompt keeps its end: "
        "its earliest turns go first (the system message stays), then the start of the latest "
        "user turn; the answers (chosen and rejected alike) keep their start. split: "
        "LLaMA-Factory's budget: a prompt or answer under half of cutoff_len is kept whole, "
        "otherwise cutoff_len is divided in proportion to their lengths; keep_prompt: the "
        "answers get what the prompt leaves. Either way each side keeps at least "
        "cutoff_len // 4 tokens (or all of its own if fewer).",
    )

    @model_validator(mode="after")
    def _smoothing_needs_robust(self) -> PreferenceConfig:
        # TRL 1.x applies label smoothing in the robust loss only; ignoring it would mislead
        if self.label_smoothing > 0 and self.loss_type != "robust":
            raise ValueError(
                "label_smoothing applies to loss_type robust only; set "
                "train.preference.loss_type=robust or label_smoothing=0"
            )
        return self


class DistillConfig(Section):
    """A teacher model teaches the student (the model section)."""

    teacher: str = Field(
        ...,
        description="Local folder, hub id, embedded alias, run folder; for mode sequence also an "
        "OpenAI-compatible endpoint (http://host:port/v1#model).",
    )
    mode: Literal["logits", "sequence"] = Field(
        "logits",
        description="logits: match the teacher's token distributions (same vocabulary needed); "
        "sequence: train on answers the teacher generates (any teacher).",
    )
    temperature: float = Field(2.0, gt=0, description="logits: softening temperature T.")
    alpha: float = Field(
        0.5, ge=0, le=1, description="logits: loss = alpha * CE + (1 - alpha) * T^2 * KL."
    )
    max_new_tokens: int = Field(256, ge=1, description="sequence: length of teacher answers.")
    agreement_prompts: int = Field(
        16, ge=0, description="Held-out prompts for teacher/student agreement; 0: off."
    )
