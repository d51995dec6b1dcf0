"""Time of a classification run (train.stage: cls), priced as summary.json's `seconds` counts
it: the training steps, every evaluation (each save step and the final report) and the setup
(data read and tokenized, model loaded, trainer built, artifact and report written).

Batches are padded (plan/batches.py), or padding-free for a first-token encoder under
train.optimize (models/packed_encoder.py), so the run is priced batch by batch, or text by
text, from the sampled length distribution: a short probe measures a training row and an
evaluation row at two or three padded lengths and fits a + b L + c L^2 to each; without
local weights the FLOPs of an encoder (bidirectional attention, no LM head, embeddings looked
up) or decoder set b and c.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import torch

from tunesmith.models.packed_encoder import packed_forward, packs, packs_run
from tunesmith.plan.batches import RowCost, epoch_batches, epoch_lengths, padded, padded_tokens
from tunesmith.plan.time import TimeEstimate, device_flops, flops_per_token
from tunesmith.utils.errors import TunesmithError

PROBE_TOKENS = 1024  # padded tokens per probe step (fewer rows at long lengths): seconds
PROBE_REPEATS = 2  # timed steps per length, after an untimed one
# setup beyond loading and tokenizing: the Trainer and its callbacks, the first checkpoint-free
# save of the adapter, the classification report and its plot (measured on CPU, tiny models)
SETUP_SECONDS = 3.0


def estimate_cls_time(plan, probe: bool = True) -> TimeEstimate:
    train, evals, passes, steps, batches = _workload(plan)
    note = ""
    if plan.data.count is None:
        note = " (data not read: 1000 records of cutoff_len tokens assumed)"
    if probe and plan.hardware.here:
        try:
            row, forward, loaded = probe_costs(plan, train + evals)
            return _estimate(
                plan, "probe", row, forward, loaded, train, evals, passes, steps, batches, note
            )
        except (TunesmithError, OSError, RuntimeError, TypeError, ValueError) as exc:
            note += f" (probe impossible: {str(exc).splitlines()[0][:120]})"
    row, forward = flops_costs(plan)
    return _estimate(plan, "flops", row, forward, 0.0, train, evals, passes, steps, batches, note)


def _estimate(plan, method, row, forward, loaded, train, evals, passes, steps, batches, note):
    cfg = plan.config.train
    epochs = _epochs(plan, batches)
    parts = {
        "train": row.seconds(train, batches / cfg.gradient_accumulation_steps) * epochs,
        "eval": forward.seconds(evals) * passes,
        "setup": loaded + plan.data.prepare_seconds + SETUP_SECONDS,
    }
    seconds = sum(parts.values())
    real = (plan.data.mean_tokens or _limit(plan)) * sum(r * n for (r, _), n in train.items())
    tokens = int(real * epochs)
    share = 1 - real / max(1, padded_tokens(train))
    layout = "padding-free" if _packed(plan) else f"{100 * share:.0f}% padding"
    if method == "probe":
        how = f"measured at {len(_probe_lengths(train + evals))} padded lengths"
    else:
        how = f"{flops_per_row(plan, 1) / 1e9:.2f} GFLOPs per token"
    note = (
        f"{how}; {layout} ({_sampler(plan)}); train {parts['train']:.0f} s, "
        f"eval {parts['eval']:.0f} s ({passes} passes), setup {parts['setup']:.0f} s" + note
    )
    return TimeEstimate(
        method, tokens / max(parts["train"], 1e-9), tokens, steps, seconds, note, parts
    )


def _limit(plan) -> int:
    """The longest input: data.cutoff_len, capped at the model's position table."""
    cutoff = plan.config.data.cutoff_len
    return min(cutoff, plan.facts.shapes.positions or cutoff)


def _sampler(plan) -> str:
    """The run's sampler: train.sampling auto is settled on the data (batch_sampling)."""
    return plan.data.sampler or plan.config.train.sampler


def _packed(plan) -> bool:
    """Whether the run's batches are padding-free (models/packed_encoder.py)."""
    model_type = plan.facts.shapes.model_type
    return packs_run(model_type, plan.config.train.optimize, plan.config.method.type)


def _workload(plan) -> tuple[Counter, Counter, int, int, int]:
    """(rows one epoch of training computes, rows one evaluation computes, evaluations,
    optimizer steps, training batches per epoch)."""
    cfg, data = plan.config.train, plan.data
    sampler, packed = _sampler(plan), _packed(plan)
    sample = data.lengths or (_limit(plan),)
    count = data.count if data.count is not None else 1000
    group = cfg.batch_size * cfg.gradient_accumulation_steps
    train = epoch_batches(
        epoch_lengths(sample, count, cfg.seed), cfg.batch_size, sampler, cfg.seed, group, packed
    )
    batches = math.ceil(count / cfg.batch_size)
    per_epoch = max(1, batches // cfg.gradient_accumulation_steps)
    steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(per_epoch * cfg.epochs)
    evals: Counter = Counter()
    passes = 0
    if data.eval_examples:
        # the evaluation sampler groups lengths too when training does (transformers)
        sampler = "group_by_length" if sampler == "group_by_length" else "sequential"
        lengths = epoch_lengths(data.eval_lengths, data.eval_examples, cfg.seed)
        evals = epoch_batches(lengths, cfg.batch_size, sampler, cfg.seed, packed=packed)
        passes = steps // cfg.save_steps + 1  # every save step, and the final report
    return train, evals, passes, steps, batches


def _epochs(plan, batches: int) -> float:
    """Epochs of `batches` batches the run takes (max_steps: the steps' share of one epoch)."""
    cfg = plan.config.train
    if cfg.max_steps <= 0:
        return cfg.epochs
    return cfg.max_steps * cfg.gradient_accumulation_steps / batches


# probe ----------------------------------------------------------------------------------------


def _probe_lengths(batches: Counter) -> list[int]:
    """The shortest and longest padded lengths of the run, and one between them."""
    lengths = sorted({length for _, length in batches})
    low, high = lengths[0], lengths[-1]
    return sorted({low, padded((low + high) // 2), high})


def probe_costs(plan, batches: Counter) -> tuple[RowCost, RowCost, float]:
    """(training row cost, evaluation row cost, seconds to load the model) from a few real
    steps of the classifier with its method, attention masks and loss at the run's padded
    lengths (padding-free rows where the run's are)."""
    from tunesmith.models.classifier import load_classifier
    from tunesmith.models.load import enable_checkpointing, no_load_report
    from tunesmith.models.methods import get_method
    from tunesmith.models.resolve import resolve_model
    from tunesmith.models.speed import optimize_for_training
    from tunesmith.plan.count import known_key

    config = plan.config
    resolved = resolve_model(config.model.name_or_path)
    if resolved.source == "hub" or known_key(config.model.name_or_path):
        raise TunesmithError("no local weights")
    start = time.perf_counter()
    labels = config.train.cls.labels or [str(i) for i in range(max(plan.data.labels, 2))]
    with no_load_report():
        model, _, _ = load_classifier(config.model, labels, config.train.cls)
    model = get_method(config.method.type).apply(model, config.method, task="seq_cls")
    if config.train.gradient_checkpointing:
        enable_checkpointing(model)
    model = optimize_for_training(model, config.train.optimize)  # as training runs it
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    loaded = time.perf_counter() - start
    step = _Stepper(model, len(labels), config.train.cls.multi_label, device)
    train, forward = [], []
    for length in _probe_lengths(batches):
        rows = min(config.train.batch_size, max(1, PROBE_TOKENS // length))
        # the first step at a shape maps fresh memory and builds kernels (2-3x slower on a
        # CPU); the trainer repeats its shapes, so that step is not timed
        step.train(rows, length)
        train.append((length, _mean(step.train(rows, length) for _ in range(PROBE_REPEATS)) / rows))
        forward.append((length, step.forward(rows, length) / rows))
    return RowCost.fit(train, step.optimizer_seconds), RowCost.fit(forward), loaded


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


class _Stepper:
    """Training steps (forward, loss, backward) and evaluation forwards on random ids; the
    optimizer step is timed apart: it costs the same whatever the batch holds."""

    def __init__(self, model, labels: int, multi_label: bool, device: str):
        self.model, self.labels, self.multi_label, self.device = model, labels, multi_label, device
        trained = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trained, lr=1e-5)
        self.vocab = model.config.vocab_size
        self.optimizer_seconds = 0.0
        self.packed = packs(model)

    def _logits(self, batch: dict) -> torch.Tensor:
        return (packed_forward(self.model, batch) if self.packed else self.model(**batch)).logits

    def _batch(self, rows: int, length: int) -> dict:
        ids = torch.randint(0, self.vocab, (rows, length), device=self.device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def _loss(self, logits: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        logits = logits.float()
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        targets = torch.randint(0, self.labels, (len(logits),), device=self.device)
        return F.cross_entropy(logits, targets)

    def train(self, rows: int, length: int) -> float:
        self.model.train()
        batch = self._batch(rows, length)
        start = time.perf_counter()
        self._loss(self._logits(batch)).backward()
        self._sync()
        middle = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._sync()
        self.optimizer_seconds = time.perf_counter() - middle
        return middle - start

    @torch.no_grad()
    def forward(self, rows: int, length: int) -> float:
        self.model.eval()
        batch = self._batch(rows, length)
        start = time.perf_counter()
        self._logits(batch)
        self._sync()
        return time.perf_counter() - start

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


# FLOPs ----------------------------------------------------------------------------------------


def flops_per_row(plan, length: int, train: bool = True) -> float:
    """FLOPs of one row of `length` tokens: the weights that multiply (embeddings are looked up;
    a classifier has no LM head) and attention, bidirectional in an encoder."""
    from tunesmith.plan.time import _base_frozen

    s, facts = plan.facts.shapes, plan.facts
    weights = facts.total - facts.embeddings
    causal = not s.bidirectional
    if not train:
        attention = (2 if causal else 4) * s.layers * length * s.q_dim
        return length * (2 * weights + attention)
    per_token = flops_per_token(
        weights,
        plan.trainable,
        _base_frozen(plan),
        plan.config.train.gradient_checkpointing,
        s.layers,
        s.q_dim,
        length,
        causal,
    )
    return length * per_token


def flops_costs(plan) -> tuple[RowCost, RowCost]:
    """(training, evaluation) row costs from FLOPs at the planned device's sustained rate."""
    rate = device_flops(plan.hardware)
    costs = []
    for train in (True, False):
        one, two = flops_per_row(plan, 1, train), flops_per_row(plan, 2, train)
        c = (two - 2 * one) / 2  # flops(L) = b L + c L^2
        costs.append(RowCost(0.0, (one - c) / rate, c / rate))
    return costs[0], costs[1]
