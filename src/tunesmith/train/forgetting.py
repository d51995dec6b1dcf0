"""Forgetting control (chapter 3, section 3.1): fine-tuning pulls a model away from what it knew.

Three levers, each off by default:

- replay (`data.replay`): general data mixed into the training examples, so every epoch also
  revisits what the model should keep;
- L2-SP (`train.l2_to_pretrained`): lambda * ||theta - theta_pretrained||^2 added to the loss;
- layer-wise learning-rate decay (`train.layerwise_lr_decay`): lower layers, which hold the most
  general features, move least.

`add_replay` runs on the data; `L2ToPretrained` and `layerwise_param_groups` are used by
`trainer.CausalLMTrainer` (compute_loss and create_optimizer).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import torch

from tunesmith.config.schema import DataConfig
from tunesmith.data.dataset import RejectSink, SFTData, build_sft_data
from tunesmith.data.registry import Source, sft_sources
from tunesmith.data.render import IGNORE_INDEX
from tunesmith.models.methods.freeze import layer_index
from tunesmith.utils.console import console
from tunesmith.utils.errors import ConfigError, DataError

# --- replay ------------------------------------------------------------------------------------


def replay_sources(cfg: DataConfig) -> list[Source]:
    """What data.replay reads; [] when replay is off. Called before the model loads."""
    replay = cfg.replay
    if replay is None:
        return []
    # data.train's reading, on the replay files, names, format and columns
    as_train = cfg.model_copy(
        update={
            "train": replay.files,
            "dataset": replay.dataset,
            "format": replay.format,
            "columns": replay.columns,
        }
    )
    try:
        return sft_sources(as_train)
    except ConfigError as e:
        raise ConfigError(str(e).replace("data.dataset", "data.replay.dataset")) from None


def add_replay(
    task: SFTData,
    sources: Sequence[Source],
    cfg: DataConfig,
    seed: int,
    tokenizer,
    reject: RejectSink | None = None,
) -> SFTData:
    """The task examples plus replay examples making up data.replay.ratio of the result.

    Replay records are read, rendered and rejected like data.train (data.on_error, cutoff_len;
    data.max_samples caps the task data only). The trainer shuffles the mix.
    """
    if not sources:
        return task
    pool = build_sft_data(sources, cfg.model_copy(update={"max_samples": None}), tokenizer, reject)
    if not pool.examples:
        raise DataError(f"data.replay: no usable example in {_names(sources)}")
    count = replay_count(len(task.examples), cfg.replay.ratio)
    picked, repeated = sample_replay(pool.examples, count, seed)
    examples = task.examples + picked
    stats = pool.stats
    replay = {
        "ratio": cfg.replay.ratio,
        "examples": count,
        "available": len(pool.examples),
        "with_replacement": repeated,
        **{k: stats[k] for k in ("read", "rejected", "truncated", "formats")},
    }
    mixed = {
        **task.stats,
        # records read and rejected cover both, like rejects.jsonl; the rest describes the mix
        "read": task.stats["read"] + stats["read"],
        "rejected": task.stats["rejected"] + stats["rejected"],
        "examples": len(examples),
        "tokens": sum(len(e["input_ids"]) for e in examples),
        "trainable_tokens": sum(sum(t != IGNORE_INDEX for t in e["labels"]) for e in examples),
        "sources": {"task": len(task.examples), "replay": count},
        "replay": replay,
    }
    note = " (fewer available: some repeated)" if repeated else ""
    console.print(f"replay: {count} of {len(pool.examples)} general examples mixed in{note}")
    return SFTData(examples, mixed)


def replay_count(task_examples: int, ratio: float) -> int:
    """Replay examples that make up `ratio` of task + replay (8 task, 0.2 -> 2)."""
    return round(task_examples * ratio / (1 - ratio))


def sample_replay(pool: list, count: int, seed: int) -> tuple[list, bool]:
    """`count` examples drawn without replacement while the pool lasts; beyond it, the whole pool
    is repeated (so every example is used as evenly as possible). Returns (picked, repeated)."""
    rounds, rest = divmod(count, len(pool))
    return pool * rounds + random.Random(seed).sample(pool, rest), count > len(pool)


def _names(sources: Sequence[Source]) -> str:
    return ", ".join(str(p) for s in sources for p in s.paths)


# --- L2 towards the pretrained weights (L2-SP) -------------------------------------------------


class L2ToPretrained:
    """lambda * sum((p - p0)^2) over the trainable parameters, p0 the pretrained values.

    - Full and freeze tuning: p0 is a copy of each trainable parameter, taken when the trainer is
      built. On a resume the model has just been loaded from the base (the checkpoint is restored
      later, in `train`), so p0 is the pretrained weights again: nothing needs saving.
      Memory: one copy of the trainable parameters.
    - LoRA: the penalty is on the merged update, ||scaling * B @ A||^2, which is exactly
      theta - theta_pretrained for the adapted weight (p0 = 0, whatever A's random init). It is
      computed as scaling^2 * sum((B^T B) * (A A^T)), r x r products: the full-size update is
      never materialised and no copy is kept. Other trainable tensors (modules_to_save, DoRA
      magnitudes) are copied as above.

    Sharded training (FSDP, DeepSpeed ZeRO-3) replaces the parameters: not supported.
    """

    def __init__(self, model: torch.nn.Module, weight: float):
        self.weight = weight
        self.lora = _lora_pairs(model)
        in_lora = {id(p) for a, b, _ in self.lora for p in (a, b)}
        self.anchors = [
            (p, p.detach().clone())
            for p in model.parameters()
            if p.requires_grad and id(p) not in in_lora
        ]
        self._total: torch.Tensor | float = 0.0  # penalties since the last log
        self._calls = 0

    def __call__(self) -> torch.Tensor:
        """The weighted penalty at the current weights, with its graph; recorded for the log."""
        terms = [(p.float() - p0.float()).pow(2).sum() for p, p0 in self.anchors]
        terms += [_lora_update_sq(a, b, scaling) for a, b, scaling in self.lora]
        penalty = self.weight * torch.stack(terms).sum() if terms else torch.zeros(())
        self._total = self._total + penalty.detach()  # a tensor: no device sync per step
        self._calls += 1
        return penalty

    def mean_since_last_log(self) -> float | None:
        if not self._calls:
            return None
        mean = float(self._total) / self._calls
        self._total, self._calls = 0.0, 0
        return mean


def _lora_pairs(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """(A, B, scaling) of each trainable LoRA adapter (PEFT's layers: lora_A, lora_B, scaling)."""
    pairs = []
    for module in model.modules():
        lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if not all(isinstance(m, torch.nn.ModuleDict) for m in (lora_a, lora_b)):
            continue
        for name in lora_a:
            a, b = lora_a[name].weight, lora_b[name].weight
            if a.requires_grad or b.requires_grad:
                pairs.append((a, b, module.scaling[name]))
    return pairs


def _lora_update_sq(a: torch.Tensor, b: torch.Tensor, scaling: float) -> torch.Tensor:
    # ||B A||_F^2 = trace(A^T B^T B A) = sum((B^T B) * (A A^T)); conv kernels live in A
    a, b = a.flatten(1).float(), b.flatten(1).float()
    return scaling**2 * ((b.T @ b) * (a @ a.T)).sum()


# --- layer-wise learning-rate decay ------------------------------------------------------------

_EMBEDDING = re.compile(r"embed|(?:^|\.)(?:wte|wpe)\.")  # embed_tokens, embeddings, GPT-2's wte


def layerwise_param_groups(
    model: torch.nn.Module,
    learning_rate: float,
    decay: float,
    weight_decay: float,
    decay_names: set[str],
) -> list[dict]:
    """Optimizer groups: decoder layer i of n gets learning_rate * decay^(n - 1 - i), embeddings
    decay^n (the lowest), what sits above the layers (final norm, lm_head) the full rate.

    Parameters named in `decay_names` get weight_decay, the rest (biases, norms) none, as in the
    Trainer's own groups. Groups come highest rate first: the trainer logs the first group's lr.
    """
    layers = [i for name, _ in model.named_parameters() if (i := layer_index(name)) is not None]
    if not layers:
        raise ConfigError(
            "train.layerwise_lr_decay: no decoder layers found in the model's parameter names "
            "(layers.<i>, h.<i>, layer.<i>, blocks.<i>); set it to 1.0"
        )
    depth_below_top = max(layers) + 1
    groups: dict[tuple[int, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (_depth(name, depth_below_top), name in decay_names)
            groups.setdefault(key, []).append(param)
    return [
        {
            "params": params,
            "lr": learning_rate * decay**depth,
            "weight_decay": weight_decay if decays else 0.0,
        }
        for (depth, decays), params in sorted(groups.items(), key=lambda kv: kv[0])
    ]


def _depth(name: str, num_layers: int) -> int:
    """How many steps of decay below the top a parameter sits."""
    index = layer_index(name)
    if index is not None:
        return num_layers - 1 - index
    return num_layers if _EMBEDDING.search(name) else 0
