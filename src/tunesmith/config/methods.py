"""The `method` section: which fine-tuning method and its settings (models/methods/ applies it)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from tunesmith.config.base import Section


class FullMethod(Section):
    type: Literal["full"] = "full"


class FreezeMethod(Section):
    type: Literal["freeze"] = "freeze"
    trainable_layers: int = Field(2, ge=0, description="Train the last N decoder layers.")
    trainable_modules: list[str] = Field(
        default_factory=list,
        description="Extra module names to train (e.g. lm_head, norm, embed_tokens).",
    )


class LoraMethod(Section):
    type: Literal["lora"] = "lora"
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field(
        "all-linear", description="'all-linear' or a list of module names (q_proj, v_proj, ...)."
    )
    modules_to_save: list[str] = Field(default_factory=list)


MethodConfig = Annotated[FullMethod | FreezeMethod | LoraMethod, Field(discriminator="type")]
