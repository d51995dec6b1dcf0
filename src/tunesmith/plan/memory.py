"""Peak training memory: weights + gradients + optimizer states + activations + logits +
framework overhead, for CPU (process RSS) and for a CUDA GPU (device memory).

The activation formula counts the tensors autograd keeps for the backward pass of one
Llama-style block (RMSNorm, attention with rotary embeddings, gated MLP), per token, in
elements. Its terms were read off `torch.autograd.graph.saved_tensors_hooks` on real blocks
(tests/test_plan.py checks it against that measurement) and the totals calibrated against
the peak RSS of real training runs (benchmarks/memory_estimate.py), not the seeds' formula.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from tunesmith.plan.count import Shapes

Device = Literal["cpu", "cuda"]
GB = 1024**3
# Process RSS of python + torch + transformers + the Trainer before the model loads (measured
# on Linux x86-64, torch 2.13 CPU); a CUDA context takes about 0.8 GB of device memory.
CPU_BASELINE = int(0.5 * GB)
CUDA_CONTEXT = int(0.8 * GB)
CUDA_FRAGMENTATION = 0.05  # the caching allocator keeps freed blocks of other sizes


@dataclass(frozen=True)
class Workload:
    """What one training step holds: a batch of `seq`-token examples."""

    batch: int
    seq: int  # tokens per example: cutoff_len, or the longest example when that is shorter
    packed: bool = True  # examples concatenated into one row (tunesmith's default)
    gradient_checkpointing: bool = False
    trained_fraction: float = 1.0  # share of positions whose next token is in the loss
    optimize: bool = False  # train.optimize: attention dropout on the CPU runs grouped in cache

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


@dataclass(frozen=True)
class Precision:
    param_bytes: int  # stored weights (4: fp32, 2: bf16/fp16)
    compute_bytes: int  # activations
    quant_bits: int | None = None  # qlora: 4 or 8-bit base weights
    double_quant: bool = True
    master_weights: bool = False  # DeepSpeed ZeRO keeps fp32 copies and fp32 Adam states
    autocast_copies: bool = False  # CPU bf16 autocast: bf16 copies of the linear weights


@dataclass
class MemoryEstimate:
    device: Device
    weights: int
    gradients: int
    optimizer: int
    master_weights: int
    activations: int
    logits: int
    overhead: int
    notes: list[str] = field(default_factory=list)

    @property
    def training(self) -> int:
        """Everything the job adds to a fresh process (the overhead excluded)."""
        return self.total - self.overhead

    @property
    def total(self) -> int:
        parts = (self.weights, self.gradients, self.optimizer, self.master_weights)
        return sum(parts) + self.activations + self.logits + self.overhead

    def as_dict(self) -> dict:
        return {**asdict(self), "training": self.training, "total": self.total}


def block_activations(
    shapes: Shapes,
    kind: str,
    method=None,
    masked_tokens: int = 0,
    probs_keys: int = 0,
    kept_per_key: float = 3.0,
) -> float:
    """Elements autograd keeps per token for one block (a decoder's; an encoder's below).

    kind: "trained" (the block's weights train), "frozen" (gradients pass through it to
    trained parameters below or inside it) or "none" (nothing below needs a gradient).
    masked_tokens: key positions of an explicit attention mask (packed rows or padded batches):
    torch then keeps a float mask per layer and transformers expands the grouped keys/values.
    probs_keys: key positions per query where attention runs on the math path and keeps its
    probabilities (dropout on them, on CPU: SDPA's flash kernel has no dropout there).
    kept_per_key: elements kept per head and key there: 3 on SDPA's math path; the grouped
    path of models/dropout_attention.py keeps only its boolean mask (1 byte).
    """
    if kind == "none":
        return 0.0
    # math path: the softmax output, the dropout mask and the dropped probabilities, one float
    # each per head and key (read off saved_tensors_hooks on BERT: tests/test_plan.py)
    probs = kept_per_key * shapes.heads * probs_keys
    if shapes.bidirectional:
        grouped = probs_keys > 0 and kept_per_key < 3
        return _encoder_block(shapes, kind, method, grouped) + probs
    h, i, q, kv = shapes.hidden, shapes.intermediate, shapes.q_dim, shapes.kv_dim
    attention = q + 2 * kv + shapes.heads + q  # rotated q, k, v; logsumexp; attention output
    if kind == "trained":  # + inputs of every linear and norm weight
        elements = 5 * h + attention + q + 4 * i
    else:  # norm inputs, attention, gate / activation / up of the MLP; + 2h of backward
        # workspace the process keeps (RSS calibration; saved tensors alone show 4h)
        elements = 6 * h + attention + 3 * i + _method_activations(shapes, method)
    if masked_tokens:
        elements += masked_tokens + 2 * (q - kv)
    return float(elements + probs)


def _encoder_block(shapes: Shapes, kind: str, method, grouped: bool = False) -> float:
    """A BERT-style block (attention, LayerNorm, one GELU MLP), read off saved_tensors_hooks
    (tests/test_plan.py): trained, the inputs of Q/K/V, the attention output, both LayerNorms,
    the FFN's two linears and GELU; frozen, what passes gradients through (attention, the
    LayerNorms, GELU) plus the method's own term. Hidden dropout keeps two masks. A trained
    block's backward also holds workspace in peak RSS (saved tensors alone are 8h + 2i): about
    2h + 2i with SDPA's math path, h + i with the grouped dropout attention (grouped; each
    calibrated on the cls-full-256-b16 row of benchmarks/memory_estimate.py)."""
    h, i = shapes.hidden, shapes.intermediate
    masks = 2 * h if shapes.hidden_dropout > 0 else 0
    if kind == "trained":
        workspace = h + i if grouped else 2 * h + 2 * i
        return float(8 * h + 2 * i + workspace + shapes.heads + 4 + masks)
    return float(6 * h + i + shapes.heads + 4 + masks + _method_activations(shapes, method))


def _method_activations(shapes: Shapes, method) -> float:
    """What a PEFT method adds inside a frozen block: the method's own term."""
    return 0.0 if method is None else _form(method).frozen_block_activations(shapes, method)


def _form(method):
    from tunesmith.models.methods import get_method

    return get_method(method.type)


def activation_bytes(
    shapes: Shapes,
    method,
    work: Workload,
    compute_bytes: int,
    device: Device = "cpu",
    autocast: bool = False,
) -> int:
    """Activations of the whole stack for one step, with or without gradient checkpointing."""
    masked = _masked_tokens(work)
    probs = work.seq if shapes.attention_dropout > 0 and device == "cpu" else 0
    # train.optimize outside autocast: models/speed.py routes it to the grouped path
    kept = 1 / compute_bytes if work.optimize and not autocast else 3.0
    form = _form(method)
    peft = not form.trains_base_weights
    trained = form.trained_blocks(method, shapes.layers)
    below = "frozen" if peft or form.trains_embeddings(method) else "none"
    per_block = [block_activations(shapes, "trained", method, masked, probs, kept)] * trained + [
        block_activations(shapes, below, method, masked, probs, kept)
    ] * (shapes.layers - trained)
    if work.gradient_checkpointing:
        # each block keeps its input (3h in peak RSS: h in saved tensors, plus the gradient
        # flowing between blocks); one block at a time is recomputed in the backward pass
        blocks = sum(1 for e in per_block if e)
        lora = form.checkpointed_activations(shapes, method) if device == "cpu" else 0.0
        kept = (3 * shapes.hidden + lora) * blocks
        kept += max(per_block, default=0)
    else:
        kept = sum(per_block)
    stem = 4 * shapes.hidden  # embedding output, final norm
    return int((kept + stem) * work.tokens * compute_bytes)


def _masked_tokens(work: Workload) -> int:
    if work.packed:
        return work.tokens if work.batch > 1 else 0
    return work.seq if work.batch > 1 else 0


def logits_bytes(shapes: Shapes, work: Workload, compute_bytes: int) -> int:
    """The loss's share: tunesmith computes logits only for trained positions
    (train/trainer.py). Per kept position: the logits, their fp32 copy when computed in half
    precision, log-softmax, and the two gradients of the backward pass."""
    per_position = 16 if compute_bytes == 4 else 4 * 4 + 2 * compute_bytes
    kept = work.tokens * work.trained_fraction
    return int(kept * shapes.vocab * per_position)


def estimate_memory(
    shapes: Shapes,
    total: int,
    trainable: int,
    method,
    work: Workload,
    device: Device,
    precision: Precision,
    quantizable: int = 0,
) -> MemoryEstimate:
    """Peak memory of a training step. `quantizable`: the block linears' weight count (what a
    4/8-bit base stores quantized); `trainable` as count.trainable_parameters gives it."""
    peft = not _form(method).trains_base_weights
    weights = total * precision.param_bytes
    notes: list[str] = []
    if precision.quant_bits:
        per_param = _quantized_bytes(precision.quant_bits, precision.double_quant)
        weights -= int(quantizable * (precision.param_bytes - per_param))
        notes.append(f"{precision.quant_bits}-bit base: {per_param:.3f} bytes per block weight")
    # PEFT keeps its own parameters in fp32 (autocast_adapter_dtype); AdamW states are
    # zeros_like(param): the trained parameters' dtype.
    trained_bytes = 4 if peft else precision.param_bytes
    weights += trainable * 4 if peft else 0
    gradients = trainable * trained_bytes
    optimizer = 2 * trainable * trained_bytes
    master = 0
    if precision.master_weights and trained_bytes < 4:
        master = trainable * 4
        optimizer = 2 * trainable * 4
        notes.append("DeepSpeed keeps fp32 master weights and fp32 Adam states")
    if precision.autocast_copies:
        # autocast casts each frozen linear weight (the output layer too) to bf16 on every
        # forward and autograd keeps the copy for the backward: 2 bytes each for the step
        weights += 2 * (quantizable + shapes.vocab * shapes.hidden)
        notes.append("bf16 autocast: bf16 copies of the linear weights, 2 bytes each")
    activations = activation_bytes(
        shapes, method, work, precision.compute_bytes, device, precision.autocast_copies
    )
    logits = logits_bytes(shapes, work, precision.compute_bytes)
    core = weights + gradients + optimizer + master + activations + logits
    overhead = CPU_BASELINE if device == "cpu" else CUDA_CONTEXT + int(CUDA_FRAGMENTATION * core)
    return MemoryEstimate(
        device, weights, gradients, optimizer, master, activations, logits, overhead, notes
    )


def _quantized_bytes(bits: int, double_quant: bool) -> float:
    # bitsandbytes: 4-bit NF4 keeps an absmax per 64 weights (8-bit when double-quantized,
    # fp32 otherwise); 8-bit LLM.int8 keeps an fp32 scale per row (negligible).
    if bits == 8:
        return 1.0
    return 0.5 + (1 / 64 + 4 / (64 * 256) if double_quant else 4 / 64)
