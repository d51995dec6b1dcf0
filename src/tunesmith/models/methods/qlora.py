"""QLoRA (Dettmers et al. 2023): LoRA on a base model quantized to 4-bit NF4/FP4 or 8-bit by
bitsandbytes at load time (models/load.py asks `quantization_config`), trained in bf16/fp16.

Needs a CUDA GPU and bitsandbytes (`pip install 'tunesmith[gpu]'`); without them every entry
point says so in one sentence and suggests `lora`. The saved artifact is a plain LoRA adapter:
it loads onto the full-precision base as well (merging into a 4-bit base would lose precision,
so merge onto the full-precision base, as export does).
"""

from __future__ import annotations

import importlib.util

import torch

from tunesmith.config.methods import LoraMethod, QLoraMethod
from tunesmith.models.methods.base import Task, register
from tunesmith.models.methods.lora import Lora
from tunesmith.utils.errors import ModelError

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@register
class QLora(Lora):
    """Merges onto the full-precision base, as export does; its PiSSA / OLoRA adapters are
    converted on save as LoRA's are."""

    name = "qlora"
    config = QLoraMethod
    peft_type = "LORA"  # a plain LoRA adapter: without a marker its folder reads as lora
    why = (
        "QLoRA stores the base weights in 4 bits (~0.52 bytes per weight): the smallest memory "
        "that still trains well"
    )

    def apply(self, model, cfg: QLoraMethod, task: Task = "causal_lm"):
        from peft import prepare_model_for_kbit_training

        check_available()
        if not getattr(model, "is_quantized", False):
            raise ModelError(
                "method qlora: the base model was loaded unquantized; load it with "
                "load_model_and_tokenizer(model_cfg, quantization_config(method_cfg))"
            )
        # norms to fp32, input grads on, so the frozen 4-bit base passes gradients to LoRA
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return super().apply(model, cfg, task)

    def count(self, model, cfg: QLoraMethod, task: Task = "causal_lm") -> int:
        """LoRA's shapes on the unquantized model: planning needs no GPU."""
        lora_fields = cfg.model_dump(include=set(LoraMethod.model_fields) - {"type"})
        return Lora().count(model, LoraMethod(**lora_fields), task)

    def quantized_base(self, cfg: QLoraMethod) -> tuple[int, int]:
        return cfg.bits, 4 if cfg.compute_dtype == "float32" else 2

    def quantization_config(self, cfg: QLoraMethod):
        """The BitsAndBytesConfig the base model is loaded with."""
        check_available()
        from transformers import BitsAndBytesConfig

        if cfg.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=cfg.quant_type,
            bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=_DTYPES[cfg.compute_dtype],
        )


def check_available() -> None:
    missing = [
        what
        for what, ok in (
            ("a CUDA GPU", torch.cuda.is_available()),
            ("the bitsandbytes package (pip install 'tunesmith[gpu]')", _has_bitsandbytes()),
        )
        if not ok
    ]
    if missing:
        raise ModelError(
            f"method qlora needs {' and '.join(missing)}, which this machine lacks; "
            "use method.type=lora to train the same adapter in full precision"
        )


def _has_bitsandbytes() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None
