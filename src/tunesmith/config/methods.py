"""The `method` section: which fine-tuning method and its settings (models/methods/ applies it)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from tunesmith.config.base import Section

Activation = Literal["relu", "gelu", "silu", "tanh"]


class _VisionFields(Section):
    """What trains besides the language model of a vision-language model (models/vlm.py)."""

    train_vision: bool = Field(
        False, description="Vision-language models: train the vision tower too (frozen: False)."
    )
    train_projector: bool = Field(
        False, description="Vision-language models: train the projector into the language model."
    )


class FullMethod(_VisionFields):
    type: Literal["full"] = "full"


class UnfreezeStage(Section):
    """From `at` on, the top `layers` blocks (and `modules`) train too."""

    at: int = Field(..., ge=1, description="Step (or epoch, see unfreeze_unit) the stage starts.")
    layers: int | Literal["all"] = Field(
        0, description="Top N blocks trainable from then on; 'all': every parameter."
    )
    modules: list[str] = Field(default_factory=list, description="More module names to train.")


class FreezeMethod(Section):
    type: Literal["freeze"] = "freeze"
    trainable_layers: int = Field(2, ge=0, description="Train the last N decoder layers.")
    trainable_modules: list[str] = Field(
        default_factory=list,
        description="Extra module names to train (e.g. lm_head, norm, embed_tokens).",
    )
    unfreeze_schedule: list[UnfreezeStage] = Field(
        default_factory=list,
        description="Progressive unfreezing: stages that widen what trains, from the top down.",
    )
    unfreeze_unit: Literal["steps", "epochs"] = "steps"

    @model_validator(mode="after")
    def _stages_only_widen(self) -> FreezeMethod:
        previous_at, previous_layers = 0, self.trainable_layers
        for i, stage in enumerate(self.unfreeze_schedule):
            where = f"unfreeze_schedule[{i}]"
            if stage.at <= previous_at:
                raise ValueError(f"{where}.at: got {stage.at}, stages must start in rising order")
            if previous_layers == "all":
                raise ValueError(f"{where}: comes after a stage with layers 'all'; nothing is left")
            if stage.layers != "all" and stage.layers < previous_layers:
                raise ValueError(
                    f"{where}.layers: got {stage.layers}, below the {previous_layers} already "
                    "training (stages only unfreeze)"
                )
            previous_at, previous_layers = stage.at, stage.layers
        return self


class _LoraFields(_VisionFields):
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field(
        "all-linear", description="'all-linear' or a list of module names (q_proj, v_proj, ...)."
    )
    modules_to_save: list[str] = Field(default_factory=list)
    use_dora: bool = Field(False, description="DoRA: train magnitude and direction apart.")
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha/sqrt(r), not alpha/r.")
    init: Literal["default", "gaussian", "pissa", "pissa_fast", "olora"] = Field(
        "default",
        description="PiSSA / OLoRA start from the principal (QR) part of the weights; "
        "pissa_fast uses a 16-iteration randomized SVD.",
    )
    loraplus_lr_ratio: float | None = Field(
        None, ge=1, description="LoRA+: B matrices train at learning_rate x ratio (e.g. 16)."
    )
    init_adapter: str | None = Field(
        None,
        description="A saved LoRA adapter folder (a run's adapter/) to continue training from: "
        "its weights are the start and its r, alpha and targets are kept (tunesmith improve "
        "train retrains the production adapter this way).",
    )


class LoraMethod(_LoraFields):
    type: Literal["lora"] = "lora"


class QLoraMethod(_LoraFields):
    """LoRA on a 4-bit (NF4/FP4) or 8-bit base model; needs CUDA and bitsandbytes."""

    type: Literal["qlora"] = "qlora"
    bits: Literal[4, 8] = 4
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = Field(True, description="Quantize the quantization constants too.")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class IA3Method(Section):
    type: Literal["ia3"] = "ia3"
    target_modules: list[str] | None = Field(
        None, description="None: PEFT's default for the architecture (keys, values, FFN)."
    )
    feedforward_modules: list[str] | None = Field(
        None, description="The targets whose input (not output) is scaled; None: the default."
    )


class PrefixMethod(Section):
    """Prefix tuning: trained keys and values before every layer (no projection: P-tuning v2)."""

    type: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(10, ge=1)
    projection: bool = Field(False, description="Reparameterize the prefix through an MLP.")
    encoder_hidden_size: int | None = Field(None, ge=1, description="MLP width; None: hidden.")


class PromptMethod(Section):
    """Prompt tuning: trained embeddings prepended to the input."""

    type: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = Field(20, ge=1)
    init_text: str | None = Field(
        None, description="Start from the embeddings of this text (repeated); None: random."
    )


class PTuningMethod(Section):
    """P-tuning: the soft prompt comes out of a small MLP or LSTM encoder."""

    type: Literal["ptuning"] = "ptuning"
    num_virtual_tokens: int = Field(20, ge=1)
    encoder: Literal["mlp", "lstm"] = "mlp"
    encoder_hidden_size: int | None = Field(None, ge=1, description="None: the hidden size.")


class _AdapterFields(Section):
    adapter_size: int = Field(64, ge=1, description="Bottleneck width.")
    reduction_factor: int | None = Field(
        None, ge=1, description="Set the bottleneck to hidden_size / factor instead of a size."
    )
    activation: Activation = "relu"
    adapter_dropout: float = Field(0.0, ge=0, lt=1)


class AdapterMethod(_AdapterFields):
    """Bottleneck adapters (down, activation, up initialised to zero, residual)."""

    type: Literal["adapter"] = "adapter"
    placement: Literal["attention", "ffn", "both"] = "both"


class HybridMethod(_AdapterFields):
    """LoRA on the attention projections and bottleneck adapters after the FFN."""

    type: Literal["hybrid"] = "hybrid"
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    budget: int | None = Field(
        None,
        ge=1,
        description="Trainable-parameter budget: r and adapter_size are derived from it "
        "(2/3 LoRA, 1/3 adapters).",
    )

    @model_validator(mode="after")
    def _budget_or_sizes(self) -> HybridMethod:
        given = {"r", "adapter_size", "reduction_factor"} & self.model_fields_set
        if self.budget and given:
            raise ValueError(f"budget derives {', '.join(sorted(given))}; set one or the other")
        return self


MethodConfig = Annotated[
    FullMethod
    | FreezeMethod
    | LoraMethod
    | QLoraMethod
    | IA3Method
    | PrefixMethod
    | PromptMethod
    | PTuningMethod
    | AdapterMethod
    | HybridMethod,
    Field(discriminator="type"),
]
