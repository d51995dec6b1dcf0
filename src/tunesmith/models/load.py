"""Load a tokenizer and a causal LM from a resolved reference, offline unless it is a hub id."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from tunesmith.config.schema import ModelConfig
from tunesmith.data.render import NAMED_TEMPLATES
from tunesmith.models.resolve import ResolvedModel, resolve_model
from tunesmith.utils.errors import ModelError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(resolved: ResolvedModel, cfg: ModelConfig):
    from transformers import AutoTokenizer

    tokenizer = from_hub_or_local(
        AutoTokenizer, resolved, cfg, use_fast=True, trust_remote_code=cfg.trust_remote_code
    )
    if cfg.chat_template:
        template = Path(cfg.chat_template)
        is_file = len(cfg.chat_template) < 256 and template.is_file()
        tokenizer.chat_template = template.read_text() if is_file else cfg.chat_template
        if cfg.chat_template in NAMED_TEMPLATES:  # chatml_tools: ChatML with tool calls
            tokenizer.chat_template = NAMED_TEMPLATES[cfg.chat_template]
    if not tokenizer.chat_template:
        raise ModelError(
            f"the tokenizer of '{resolved.ref}' has no chat template; "
            "set model.chat_template to a Jinja template or a file holding one"
        )
    if tokenizer.pad_token is None:
        # Padding positions are masked out of the loss, so eos is a safe pad token.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(resolved: ResolvedModel, cfg: ModelConfig, quantization=None):
    """`quantization`: a transformers quantization config (qlora's 4/8-bit bitsandbytes)."""
    from transformers import AutoModelForCausalLM

    quantized = {"quantization_config": quantization} if quantization is not None else {}
    return from_hub_or_local(
        AutoModelForCausalLM,
        resolved,
        cfg,
        dtype=pick_dtype(cfg.dtype),
        trust_remote_code=cfg.trust_remote_code,
        **quantized,
    )


def load_model_and_tokenizer(cfg: ModelConfig, quantization=None):
    resolved = resolve_model(cfg.name_or_path)
    return load_causal_lm(resolved, cfg, quantization), load_tokenizer(resolved, cfg), resolved


def enable_checkpointing(model) -> None:
    """Activation (gradient) checkpointing, through the name transformers 5 keeps
    (`gradient_checkpointing_enable` is its deprecated alias: a FutureWarning on every run);
    PEFT models hand the call to the model they wrap. Checkpointed blocks need a gradient
    through frozen inputs, hence enable_input_require_grads."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    (enable or model.gradient_checkpointing_enable)()  # a model outside transformers
    model.enable_input_require_grads()


@contextlib.contextmanager
def no_load_report() -> Iterator[None]:
    """Loads without transformers' load report (a warning table of MISSING / UNEXPECTED keys):
    for a base whose missing weights come right after (a classifier head from the adapter or
    the run's saved head), where "newly initialized" would tell the user something untrue."""
    logger = logging.getLogger("transformers.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def pick_dtype(name: str) -> torch.dtype:
    if name != "auto":
        return _DTYPES[name]
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32  # CPU training in half precision is slow and unstable


def from_hub_or_local(auto_cls, resolved: ResolvedModel, cfg: ModelConfig, **kwargs):
    revision = {"revision": cfg.revision} if cfg.revision and resolved.source == "hub" else {}
    try:
        return auto_cls.from_pretrained(resolved.path, **revision, **kwargs)
    except OSError as exc:
        if resolved.source != "hub":
            raise ModelError(
                f"cannot load model '{resolved.ref}' from {resolved.path}: {exc}"
            ) from None
        raise ModelError(
            f"model '{resolved.ref}' is not a local folder, .gguf file or embedded alias, and it "
            f"could not be downloaded from the Hugging Face Hub (offline, or no such repository)"
        ) from None
