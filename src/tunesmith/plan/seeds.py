"""The seeds' 7B memory examples (module 5's estimate_memory), reproduced next to ours.

The seed's formula, kept only for this comparison: weights by precision, Adam at 8 bytes per
trainable parameter, LoRA assumed to train 0.5% of the model, gradients in the weight
precision, and activations batch x seq x hidden x 32 x 4 bytes with hidden guessed from the
parameter count. Decimal GB, as the seed prints.
"""

from __future__ import annotations

from tunesmith.config.schema import RunConfig

_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int4": 0.5}
# (case, seed call arguments, our method section and batch size)
SEED_CASES = [
    ("7B full (fp16, batch 1)", ("fp16", 1, False), {"type": "full"}, 1),
    ("7B LoRA (fp16, batch 4)", ("fp16", 4, True), {"type": "lora", "r": 8}, 4),
    ("7B QLoRA (int4, batch 4)", ("int4", 4, True), {"type": "qlora", "r": 8}, 4),
]


def seed_estimate_memory(
    model_size_b: float, precision: str = "fp16", batch_size: int = 1, seq_length: int = 2048,
    use_lora: bool = False,
) -> dict[str, float]:  # fmt: skip
    params = model_size_b * 1e9
    weights = params * _BYTES[precision] / 1e9
    trainable = params * 0.005 if use_lora else params
    optimizer = trainable * 8 / 1e9
    gradients = trainable * _BYTES[precision] / 1e9 if use_lora else weights
    hidden = int((params / 12 / 32) ** 0.5)
    activations = batch_size * seq_length * hidden * 32 * 4 / 1e9
    total = weights + optimizer + gradients + activations
    return {"weights": weights, "optimizer": optimizer, "gradients": gradients,
            "activations": activations, "total": total}  # fmt: skip


def seed_comparison(model: str = "llama-2-7b", seq: int = 2048) -> list[dict]:
    """Each seed case next to our estimate for the same job on one GPU (decimal GB)."""
    from tunesmith.plan.data import UNKNOWN
    from tunesmith.plan.estimate import estimate, model_facts

    facts = model_facts(model)
    rows = []
    for case, (precision, batch, lora), method, our_batch in SEED_CASES:
        seed = seed_estimate_memory(7, precision, batch, seq, lora)
        config = RunConfig.model_validate(
            {
                "model": {"name_or_path": model, "dtype": "float16"},
                "method": method,
                "data": {"cutoff_len": seq},
                "train": {"batch_size": our_batch, "precision": "fp16"},
            }
        )
        ours = estimate(facts, config, "cuda", UNKNOWN).as_dict()
        rows.append(
            {
                "case": case,
                "seed": {k: round(v, 2) for k, v in seed.items()},
                "ours": {
                    "weights": ours["weights"] / 1e9,
                    "optimizer": (ours["optimizer"] + ours["master_weights"]) / 1e9,
                    "gradients": ours["gradients"] / 1e9,
                    "activations": (ours["activations"] + ours["logits"]) / 1e9,
                    "total": ours["total"] / 1e9,
                },
            }
        )
    return rows
