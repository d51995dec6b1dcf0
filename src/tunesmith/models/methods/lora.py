"""LoRA through PEFT: low-rank updates on the chosen linear layers, with DoRA, rsLoRA,
PiSSA / OLoRA initialisation and LoRA+ (B trains at a higher learning rate)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tunesmith.config.methods import LoraMethod
from tunesmith.models.methods._peft import peft_quietly, task_type, wrap
from tunesmith.models.methods.base import Method, Task, register
from tunesmith.utils.errors import ConfigError

_INIT = {
    "default": True,
    "gaussian": "gaussian",
    "pissa": "pissa",
    "pissa_fast": "pissa_niter_16",
    "olora": "olora",
}
# PiSSA / OLoRA move the principal part of W into the adapter; the saved adapter must be
# converted back to a plain LoRA delta on the original W, from the adapter as initialised.
_INITIAL_ADAPTER = "_tunesmith_initial_adapter"


@register
class Lora(Method):
    name = "lora"
    config = LoraMethod
    peft_type = "LORA"
    vision_language = True
    learning_rate = 2e-4  # starts from zero: larger steps than full fine-tuning
    why = (
        "LoRA reaches close to full fine-tuning quality on small and medium data with a "
        "fraction of the memory (no gradients or Adam states for the base weights) and about "
        "2/3 of the compute"
    )

    def apply(self, model, cfg: LoraMethod, task: Task = "causal_lm"):
        if task == "vlm":  # the language model's linears (models/vlm.py), not the vision tower's
            cfg = vlm_lora(model, cfg)
        if cfg.init_adapter:
            return continue_adapter(model, cfg.init_adapter)
        model = wrap(model, lora_config(cfg, task))
        if cfg.init in ("pissa", "pissa_fast", "olora"):
            initial = tempfile.mkdtemp(prefix="tunesmith-initial-adapter-")
            model.save_pretrained(initial)
            setattr(model, _INITIAL_ADAPTER, initial)
        return model

    def write(self, model, out_dir: Path) -> None:
        initial = getattr(model, _INITIAL_ADAPTER, None)
        # saved as a plain LoRA of rank 2r that applies to the unchanged base model
        model.save_pretrained(out_dir, path_initial_model_for_weight_conversion=initial)

    def advised(self, scale: str, layers: int, parameters: int) -> dict:
        # more data can use more rank; alpha = 2 r keeps the update scale the same
        r = {"small": 8, "medium": 16, "large": 64}.get(scale, 16)
        return {"method.r": r, "method.alpha": 2 * r}

    def countable(self, cfg: LoraMethod) -> LoraMethod:
        return cfg.model_copy(update={"init": "default"})  # PiSSA / OLoRA: same shapes, no SVD

    def frozen_block_activations(self, shapes, cfg: LoraMethod) -> float:
        return lora_activations(shapes, cfg, targets(shapes, cfg.target_modules))

    def checkpointed_activations(self, shapes, cfg: LoraMethod) -> float:
        """Under gradient checkpointing, LoRA blocks still hold about 1.25 x their adapted
        inputs per token in peak RSS on CPU (SmolLM2: 0.75 GB more than adapters at 1024
        tokens). Saved tensors do not show it: glibc keeps the freed forward temporaries."""
        return 1.25 * sum(t[0] for t in targets(shapes, cfg.target_modules))


def vlm_lora(model, cfg: LoraMethod) -> LoraMethod:
    """cfg with the target modules named in full inside a vision-language model's language model
    (and vision tower with train_vision), its projector trained whole with train_projector."""
    from tunesmith.models.vlm import lora_targets, projector_modules

    targets = lora_targets(model, cfg.target_modules, cfg.train_vision)
    whole = projector_modules(model) if cfg.train_projector else []
    return cfg.model_copy(
        update={"target_modules": targets, "modules_to_save": [*cfg.modules_to_save, *whole]}
    )


def continue_adapter(model, folder: str):
    """The model with a saved LoRA adapter attached, trainable: training continues from its
    weights (its own r, alpha and target modules; the method section's are not used)."""
    from peft import PeftModel

    path = Path(folder).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise ConfigError(
            f"method.init_adapter: {path} is not a saved adapter folder (no adapter_config.json)"
        )
    if any(p.is_meta for p in model.parameters()):
        # the planner's weightless model (plan/count.py): the adapter's shapes are all it needs,
        # and loading weights into meta tensors is a no-op torch warns about for every tensor
        from peft import PeftConfig

        config = PeftConfig.from_pretrained(str(path))
        config.inference_mode = False
        return wrap(model, config)
    with peft_quietly():
        return PeftModel.from_pretrained(model, str(path), is_trainable=True)


def lora_config(cfg: LoraMethod, task: Task = "causal_lm"):
    from peft import LoraConfig

    return LoraConfig(
        task_type=task_type(task),
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        modules_to_save=cfg.modules_to_save or None,  # seq_cls adds the classifier head itself
        use_dora=cfg.use_dora,
        use_rslora=cfg.use_rslora,
        init_lora_weights=_INIT[cfg.init],
    )


# module name -> short name of the linears LoRA adapts in a block: a Llama block's, and a
# BERT-style encoder's (one ungated MLP: no gate)
_DECODER_LINEARS = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
}
_ENCODER_LINEARS = {
    "query": "q",
    "key": "k",
    "value": "v",
    "attention.output.dense": "o",
    "intermediate.dense": "up",
    "output.dense": "down",
}


def targets(shapes, target_modules: str | list[str]) -> list[tuple[int, int, str]]:
    """(in, out, short name) of the block's linears LoRA adapts (planner)."""
    h, i, q, kv = shapes.hidden, shapes.intermediate, shapes.q_dim, shapes.kv_dim
    sizes = {"q": (h, q), "k": (h, kv), "v": (h, kv), "o": (q, h)}
    sizes |= {"gate": (h, i), "up": (h, i), "down": (i, h)}
    names = _ENCODER_LINEARS if shapes.bidirectional else _DECODER_LINEARS
    block = {name: (*sizes[short], short) for name, short in names.items()}
    if target_modules == "all-linear":
        return list(block.values())
    wanted = [target_modules] if isinstance(target_modules, str) else target_modules
    return [shape for name, shape in block.items() if any(name.endswith(t) for t in wanted)]


def lora_activations(shapes, cfg, adapted: list[tuple[int, int, str]]) -> float:
    """Elements per token LoRA on `adapted` keeps inside a frozen block: lora_A's input where
    the block keeps it not otherwise (o_proj / down_proj), its r outputs, and dropout's output
    and mask (1.5 x the input width in saved tensors, 2.5 x in peak RSS)."""
    inputs = sum(t[0] for t in adapted)
    extra = (shapes.q_dim if any(t[2] == "o" for t in adapted) else 0) + (
        shapes.intermediate if any(t[2] == "down" for t in adapted) else 0
    )
    dropout = 2.5 * inputs if cfg.dropout > 0 else 0.0
    return extra + cfg.r * len(adapted) + dropout


def loraplus_optimizer(model, optimizer_cls, optimizer_kwargs: dict, ratio: float, weight_decay):
    """LoRA+ (Hayou et al. 2024): B matrices (and 1-D tensors) at lr x ratio, A at lr."""
    from peft.optimizers import create_loraplus_optimizer

    kwargs = dict(optimizer_kwargs)
    lr = kwargs.pop("lr")
    return create_loraplus_optimizer(
        model,
        optimizer_cls,
        lr=lr,
        loraplus_lr_ratio=ratio,
        loraplus_weight_decay=weight_decay,
        **kwargs,
    )
