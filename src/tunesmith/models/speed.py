"""Training speed levers for causal LMs on packed (padding-free) rows: same maths, less work.

`optimize_for_training(model, compile=...)` applies, where the model allows it:

- packed attention: a packed row holds several examples, told apart by position ids that restart
  at 0. transformers builds one block-diagonal row x row mask for it and runs SDPA over the whole
  row, so each example also computes scores against every other example (then masks them). Here
  each example gets its own causal SDPA call: the masked blocks are never computed, and SDPA
  takes its `is_causal` fast path, which skips the upper triangle.
- padding-free encoder rows (classification, models/packed_encoder.py): the boundaries of
  the texts in one row come as `cu_seq_lens_q`, and each text attends to itself in both
  directions (SDPA, or the grouped dropout attention below, per text).
- fused LoRA: PEFT computes `base(x) + B(A(dropout(x))) * scaling`, with extra passes over the
  layer's whole output (scale, add, and their backward). Here one autograd node adds the update
  in the matmul itself (`addmm_` with alpha=scaling into the base output) and its backward lays
  out the rank-r products the way the BLAS runs them fastest (`g @ B` as a linear of g, B's
  gradient as (low^T g)^T: 3-4x faster than the transposed forms autograd picks).
- the faster matmul kernel: frozen linear layers (LoRA bases included) multiply through
  oneDNN's `linear` kernel, forward and backward, where PyTorch has it and it beats the MKL
  `sgemm` behind `torch.mm` on a layer of a small LM's size (timed at first use, after checking
  its results on a probe). Which one wins depends on the host: oneDNN measured 10-15% faster
  in earlier sessions, MKL 13-15% faster on a later host of the same (Sapphire Rapids) family.
- fused loss: the output layer and the cross-entropy in one pass over the vocabulary in
  cache-sized chunks with an online softmax (as flash attention does for keys), the gradient
  for the hidden states computed on the way. The full (trained tokens x vocabulary) logits are
  never written to memory, read back by a separate softmax, zero-filled and read again by the
  backward; on a CPU that traffic costs more than the arithmetic. Used by CausalLMTrainer.
- kept freed memory (Linux glibc): glibc gives freed blocks of 128 KB and more straight back to
  the kernel, so every step's activations are page-faulted in afresh (on the 2-core VM measured,
  about a million faults and 6 s of system time per 80-record run). Raising its mmap and trim
  thresholds keeps them in the heap for reuse. The process's peak memory is unchanged: the
  blocks kept are the ones the next step allocates again.
- attention with dropout on the CPU (an encoder's, e.g. MiniLM's 0.1): SDPA's CPU flash kernel
  has no dropout, so SDPA takes its math path, which writes every batch x heads x L x L tensor
  to memory and reads it back. models/dropout_attention.py runs the same maths a few heads at
  a time in cache (measured 2x faster forward + backward at batch 8 x 512 on 2 cores).
- compile (opt-in, off by default): each decoder layer compiled by torch.compile (inductor,
  dynamic row lengths). Measured on 2 CPU cores it gave no steady-state gain over the levers
  above and cost about a minute of compilation, so it is there for GPUs and long runs.

Under bf16 autocast on the CPU (train.precision bf16, or auto where the probe picks it) the
fused LoRA and the fused loss multiply bf16 operands as autocast's linear would (bf16 products
accumulated in fp32, bf16 outputs; the softmax in fp32), so they keep their saving there; the
frozen linears outside LoRA are left to autocast's own bf16 linear, which is the same kernel.

Every lever falls back to the library's own code where its conditions do not hold (padding
masks, KV caches, DoRA, dropout, merged or disabled adapters), so results stay the same.
"""

from __future__ import annotations

import ctypes
import os
import platform
import types
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F

from tunesmith.utils.errors import ConfigError

PACKED_ATTENTION = "tunesmith_packed_sdpa"


def optimize_for_training(model, optimize: bool = True, compile: bool = False):
    """Switch on the levers the model supports (train.optimize, train.compile); returns the model
    (changed in place)."""
    if optimize:
        keep_freed_memory()
        use_packed_attention(model)
        fuse_lora_forward(model)
        fuse_frozen_linear(model)
    if compile:
        compile_decoder_layers(model)
    return model


# --- allocator --------------------------------------------------------------------------------

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit; larger values are refused
_TRIM_THRESHOLD_MAX = 2**31 - 1  # mallopt takes a C int: anything larger silently wraps


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks up to 32 MB in the heap instead of unmapping them (and
    not trim the heap's top), so tensors of the same sizes every step reuse mapped pages;
    returns False (changing nothing) where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mmap_set = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    trim_set = libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_MAX)
    return bool(mmap_set and trim_set)


# --- packed attention -------------------------------------------------------------------------


def sequence_lengths(position_ids: torch.Tensor) -> list[int] | None:
    """Lengths of the examples in a packed row, or None when the batch is not one packed row of
    several examples. A batch of one row whose position ids restart at 0 is what PackedCollator
    writes (no padding: the row is the examples end to end)."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1:
        return None
    row = position_ids[0]
    starts = (row == 0).nonzero().flatten()
    if starts.numel() < 2 or starts[0].item() != 0:
        return None
    ends = torch.cat([starts[1:], starts.new_tensor([row.numel()])])
    lengths = (ends - starts).tolist()
    # each example must count 0, 1, 2, ...: anything else is not the layout packing writes
    expected = torch.cat([torch.arange(n, device=row.device) for n in lengths])
    return lengths if torch.equal(expected, row) else None


def packed_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers attention function: per-example causal SDPA on a packed row, else plain sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # compiled layers keep sdpa's mask: the boundaries are a host-side list, a graph break
    compiling = torch.compiler.is_compiling()
    lengths = None if compiling else _cached_lengths(kwargs.get("position_ids"))
    # an encoder's attention (is_causal False) looks both ways: never the causal split
    causal = getattr(module, "is_causal", True)
    # a padding-free encoder row (models/packed_encoder.py) has no mask to fall back on: split
    # it per text even while compiling (a graph break, not texts attending to each other)
    texts = None if causal else _text_lengths(kwargs.pop("cu_seq_lens_q", None))
    if texts is not None:
        return _bidirectional_per_text(query, key, value, texts, **kwargs)
    if (
        not compiling
        and _cpu_dropout(query, kwargs)
        and getattr(module, "num_key_value_groups", 1) == 1
    ):
        return _dropout_attention(query, key, value, attention_mask, causal, **kwargs)
    if lengths is None or not causal or query.shape[2] != key.shape[2] or kwargs.get("dropout"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    return _per_example(
        lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=kwargs.get("scaling"), enable_gqa=groups > 1
        ),
        query,
        key,
        value,
        lengths,
    )


def _per_example(attend, query, key, value, lengths: list[int]):
    """`attend(q, k, v)` on each example's slice of a packed row, joined again and laid out
    (batch, seq, heads, dim), as sdpa_attention_forward returns it."""
    outputs = [
        attend(q, k, v)
        for q, k, v in zip(
            query.split(lengths, dim=2),
            key.split(lengths, dim=2),
            value.split(lengths, dim=2),
            strict=True,
        )
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


def _cpu_dropout(query, kwargs) -> bool:
    # the CPU's flash kernel has no dropout: SDPA would take its memory-bound math path
    # (under bf16 autocast SDPA keeps it: this kernel multiplies in fp32, outside autocast)
    plain = not any(kwargs.get(k) is not None for k in ("position_bias", "softcap"))
    cpu = query.device.type == "cpu" and not torch.is_autocast_enabled("cpu")
    return cpu and bool(kwargs.get("dropout")) and plain


def _dropout_attention(query, key, value, attention_mask, causal, dropout, scaling=None, **kwargs):
    from tunesmith.models.dropout_attention import dropout_attention

    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if kwargs.get("is_causal", causal) and attention_mask is None and query.shape[2] > 1:
        # as sdpa_attention_forward: no mask on a causal module means causal attention
        attention_mask = torch.ones(1, 1, query.shape[2], key.shape[2], dtype=torch.bool).tril()
    out = dropout_attention(query, key, value, attention_mask, dropout, scale)
    return out.transpose(1, 2).contiguous(), None


def _bidirectional_per_text(query, key, value, lengths, dropout=0.0, scaling=None, **kwargs):
    """Each text of a packed encoder row attends to itself only, in both directions."""
    from tunesmith.models.dropout_attention import dropout_attention

    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if _cpu_dropout(query, kwargs | {"dropout": dropout}):
        attend = lambda q, k, v: dropout_attention(q, k, v, None, dropout, scale)  # noqa: E731
    else:
        attend = lambda q, k, v: F.scaled_dot_product_attention(  # noqa: E731
            q, k, v, dropout_p=dropout, scale=scale
        )
    return _per_example(attend, query, key, value, lengths)


class _OncePerForward:
    """Example lengths read off a tensor that every layer of one forward receives (position
    ids, cu_seq_lens_q): computed for the first layer, reused by the others."""

    def __init__(self, read):
        self.read, self.tensor, self.lengths = read, None, None

    def __call__(self, tensor: torch.Tensor | None) -> list[int] | None:
        if tensor is None:
            return None
        if self.tensor is not tensor:
            self.tensor, self.lengths = tensor, self.read(tensor)
        return self.lengths


_cached_lengths = _OncePerForward(sequence_lengths)
_text_lengths = _OncePerForward(lambda bounds: bounds.diff().tolist())


def use_packed_attention(model) -> bool:
    """Route the model's SDPA attention through `packed_sdpa_attention`; False if it is not SDPA."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    if getattr(getattr(model, "config", None), "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)
    # the mask stays sdpa's (padded batches and caches are handled as before), but for a
    # per-text encoder row, which never reads it
    ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_ATTENTION, _mask_unless_per_text)
    for sub in _configs(model):
        if getattr(sub, "_attn_implementation", None) == "sdpa":
            sub._attn_implementation_internal = PACKED_ATTENTION
    return True


_PER_TEXT_ROW = ContextVar("per_text_row", default=False)


@contextmanager
def per_text_row():
    """While open, attention masks are not built: the forward is a padding-free encoder row
    whose attention reads the texts' boundaries (cu_seq_lens_q) instead. transformers would
    build a rows x rows block mask from the restarting position ids (23 MB and up to 0.2 s for
    16 texts of 300 tokens) that nothing reads."""
    token = _PER_TEXT_ROW.set(True)
    try:
        yield
    finally:
        _PER_TEXT_ROW.reset(token)


def _mask_unless_per_text(*args, **kwargs):
    from transformers.masking_utils import sdpa_mask

    return None if _PER_TEXT_ROW.get() else sdpa_mask(*args, **kwargs)


def _configs(model):
    seen = {}
    for sub in model.modules():
        config = getattr(sub, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen[id(config)] = config
    return seen.values()


# --- linear layers ------------------------------------------------------------------------------


def fuse_lora_forward(model) -> int:
    """Give PEFT LoRA linear layers of the plain kind (no DoRA or other variant, no LoRA bias, one
    adapter) the fused forward; returns how many layers got it."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return 0
    fused = 0
    for module in model.modules():
        if type(module) is LoraLinear and _plain_lora(module):
            module.forward = types.MethodType(_fused_lora_forward, module)
            fused += 1
    return fused


def fuse_frozen_linear(model) -> int:
    """Give frozen plain linear layers outside LoRA layers the oneDNN forward and backward
    (while they stay frozen); returns how many layers got it (0 where oneDNN's kernel is missing
    or slower than torch.mm: the library's F.linear then runs the same sgemm)."""
    if not _use_onednn():
        return 0
    lora_bases = {id(m.base_layer) for m in model.modules() if hasattr(m, "lora_A")}
    fused = 0
    for module in model.modules():
        frozen = type(module) is torch.nn.Linear and not _trains(module.weight)
        if frozen and not _trains(module.bias) and id(module) not in lora_bases:
            module.forward = types.MethodType(_frozen_linear_forward, module)
            fused += 1
    return fused


def _plain_lora(module) -> bool:
    if len(module.lora_A) != 1 or not isinstance(module.base_layer, torch.nn.Linear):
        return False
    name = next(iter(module.lora_A))
    return (
        name not in getattr(module, "lora_variant", {})
        and module.lora_B[name].bias is None
        and module.lora_A[name].bias is None
    )


def _trains(param) -> bool:
    return param is not None and param.requires_grad


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """bfloat16 while CPU autocast to bf16 is on for this CPU tensor (what autocast's linear
    would multiply in), else None."""
    on = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
    return torch.bfloat16 if on and torch.get_autocast_dtype("cpu") == torch.bfloat16 else None


def _fused_lora_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = next(iter(self.lora_A))
    base = self.base_layer
    compute = autocast_dtype(x)  # bf16 under CPU autocast (x may be either dtype then)
    plain = (
        not args
        and not kwargs
        and not self.disable_adapters
        and not self.merged
        and list(self.active_adapters) == [name]
        and self.lora_A[name].weight.dtype == base.weight.dtype
        and (x.dtype == base.weight.dtype or compute is not None)
        and not base.weight.requires_grad
        and not _trains(base.bias)
    )
    if not plain:
        return type(self).forward(self, x, *args, **kwargs)
    # the same dropout call on the same elements as PEFT's: the same mask for the same RNG state
    x_lora = self.lora_dropout[name](x)
    a, b = self.lora_A[name].weight, self.lora_B[name].weight
    return _LoRALinear.apply(x, x_lora, base.weight, base.bias, a, b, self.scaling[name], compute)


def _frozen_linear_forward(self, x: torch.Tensor) -> torch.Tensor:
    # checked at every call: progressive unfreezing makes frozen layers trainable mid-run;
    # under CPU autocast, autocast's own bf16 linear is this kernel's bf16 counterpart
    frozen = not (_trains(self.weight) or _trains(self.bias))
    if x.dtype != self.weight.dtype or not frozen or autocast_dtype(x) is not None:
        return F.linear(x, self.weight, self.bias)
    return _FrozenLinear.apply(x, self.weight, self.bias)


class _FrozenLinear(torch.autograd.Function):
    """x W^T + b with W and b frozen."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        out = _times_transposed(x.reshape(-1, x.shape[-1]), weight)
        if bias is not None:
            out.add_(bias)
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        grad_x = _times_transposed(rows, weight.t()).view(*grad.shape[:-1], weight.shape[1])
        return grad_x, None, None


class _LoRALinear(torch.autograd.Function):
    """x W^T + b + scaling * (x_lora A^T) B^T with W and b frozen; x_lora is x after dropout
    (x itself without dropout). With `compute` (bf16 under CPU autocast) every operand is cast
    to it first, as autocast's linear casts them; the backward then runs in it as well, and
    autograd casts each gradient to its input's dtype."""

    @staticmethod
    def forward(ctx, x, x_lora, weight, bias, lora_a, lora_b, scaling, compute=None):
        shared = x_lora is x
        if compute is not None:
            x, weight, lora_a, lora_b = (t.to(compute) for t in (x, weight, lora_a, lora_b))
            x_lora = x if shared else x_lora.to(compute)
            bias = None if bias is None else bias.to(compute)
        rows = x.reshape(-1, x.shape[-1])
        rows_lora = rows if shared else x_lora.reshape(-1, x_lora.shape[-1])
        with torch.autocast("cpu", enabled=False):  # the dtypes are settled above
            low = _times_transposed(rows_lora, lora_a)
            out = _times_transposed(rows, weight)
        if bias is not None:
            out.add_(bias)
        # In place is safe: no backward reads this output.
        out.addmm_(low, lora_b.t(), alpha=scaling)
        ctx.save_for_backward(rows_lora, weight, lora_a, lora_b, low)
        ctx.scaling, ctx.shared, ctx.shapes = scaling, shared, (x.shape, x_lora.shape)
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autocast("cpu", enabled=False)  # in the forward's dtypes, whoever calls it
    def backward(ctx, grad):
        rows_lora, weight, lora_a, lora_b, low = ctx.saved_tensors
        rows = grad.reshape(-1, grad.shape[-1])
        grad_low = _times_transposed(rows, lora_b.t()).mul_(ctx.scaling)  # g @ B
        grad_b = torch.mm(low.t(), rows).t().mul_(ctx.scaling)  # (low^T g)^T, not g^T low
        grad_a = _times_transposed(grad_low.t(), rows_lora.t())  # grad_low^T @ x_lora
        grad_x = grad_x_lora = None
        x_shape, lora_shape = ctx.shapes
        if ctx.needs_input_grad[0]:
            grad_x = _times_transposed(rows, weight.t())
            if ctx.shared:  # x and x_lora are one tensor: one gradient, summed in the matmul
                grad_x.addmm_(grad_low, lora_a)
            grad_x = grad_x.view(x_shape)
        if ctx.needs_input_grad[1] and not ctx.shared:
            grad_x_lora = torch.mm(grad_low, lora_a).view(lora_shape)
        return grad_x, grad_x_lora, None, None, grad_a, grad_b, None, None


def _times_transposed(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight^T for 2-D tensors (either may be a transposed view): oneDNN on fp32 CPU
    tensors where it is there and faster, else torch.mm (also inside torch.compile, which
    lowers mm itself)."""
    cpu_fp32 = x.device.type == "cpu" and x.dtype == torch.float32 == weight.dtype
    if cpu_fp32 and not torch.compiler.is_compiling() and _use_onednn():
        return _onednn_times_transposed(x, weight)
    return _mm_times_transposed(x, weight)


_ONEDNN: list[bool] = []  # [whether frozen linears multiply through oneDNN], decided at first use


def matmul_kernel(pinned: str | None = None) -> str:
    """The kernel frozen linears multiply through, "onednn" or "mm": `pinned` (a resumed run's
    choice, so that it computes bit for bit what the interrupted one would have), else
    $TUNESMITH_MATMUL_KERNEL (runs in several processes that must compute alike), where this
    machine has it; else the one that times faster here."""
    pinned = pinned or os.environ.get("TUNESMITH_MATMUL_KERNEL")
    if pinned == "mm" or (pinned == "onednn" and _onednn_works()):
        _ONEDNN[:] = [pinned == "onednn"]
    return "onednn" if _use_onednn() else "mm"


def _use_onednn() -> bool:
    """Whether this PyTorch has oneDNN's linear kernel (torch.ops.mkldnn._linear_pointwise), it
    gives torch.mm's result on a probe and it runs faster than torch.mm here."""
    if not _ONEDNN:
        faster = _onednn_works() and _runs_faster(_onednn_times_transposed, _mm_times_transposed)
        _ONEDNN.append(faster)
    return _ONEDNN[0]


def _onednn_works() -> bool:
    """Whether this PyTorch has oneDNN's linear kernel and it gives torch.mm's result."""
    kernel = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if kernel is None or not torch.backends.mkldnn.is_available():
        return False
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 7, generator=g), torch.randn(9, 7, generator=g)
    try:
        return all(
            torch.allclose(_onednn_times_transposed(a, b), a @ b.t(), rtol=1e-5, atol=1e-5)
            for a, b in ((x, w), (x.t().contiguous().t(), w.t().contiguous().t()))
        )
    except (RuntimeError, NotImplementedError):
        return False


def _onednn_times_transposed(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


def _mm_times_transposed(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return torch.mm(x, weight.t())


def _runs_faster(candidate, baseline, shape=(512, 576, 1536), repeats: int = 5) -> bool:
    """Whether candidate(x, w) beats baseline(x, w) by 3% at (rows, in, out) = shape, an MLP
    projection of a ~100M-parameter LM on a packed batch: the best of `repeats` timings each,
    interleaved so that a change in the machine's load hits both."""
    import time

    rows, features, outputs = shape
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(rows, features, generator=g), torch.randn(outputs, features, generator=g)
    kernels, best = (candidate, baseline), [float("inf")] * 2
    for _ in range(repeats + 1):  # the first round warms both up
        for i, kernel in enumerate(kernels):
            start = time.perf_counter()
            kernel(x, w)
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0] < 0.97 * best[1]


# --- compile ------------------------------------------------------------------------------------


def compile_decoder_layers(model) -> int:
    """torch.compile each decoder layer (regional compilation: one graph for all layers)."""
    if not hasattr(torch, "compile"):
        raise ConfigError("train.compile needs torch >= 2.0 with torch.compile")
    layers = _decoder_layers(model)
    if layers is None:
        raise ConfigError(
            "train.compile: cannot find the decoder layers of this model "
            f"({type(model).__name__}); set train.compile=false"
        )
    if getattr(model, "is_activation_checkpointing", False):
        raise ConfigError(
            "train.compile and train.gradient_checkpointing: compiled layers cannot be "
            "recomputed by the checkpointing wrapper; turn one of them off"
        )
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def _decoder_layers(model):
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
            return layers
    return None


# --- fused output layer and cross-entropy -------------------------------------------------------

_SCALED_LOGITS = ("final_logit_softcapping", "logit_scale", "logits_scaling")  # not plain x @ W^T


def fused_loss_head(model) -> torch.nn.Linear | None:
    """The model's output layer when the fused loss gives its exact loss: a frozen fp32 linear
    layer without bias whose logits the model does not rescale; else None."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head else None
    config = getattr(model, "config", None)
    if type(head) is not torch.nn.Linear or head.bias is not None or config is None:
        return None
    if head.weight.requires_grad or head.weight.dtype != torch.float32:
        return None
    if any(getattr(config, name, None) not in (None, 0, 1, 1.0) for name in _SCALED_LOGITS):
        return None
    return head


@contextmanager
def head_returns_hidden_states(head: torch.nn.Linear):
    """While inside, the model's "logits" are the hidden states its output layer would read."""
    own = vars(head).get("forward")  # a forward set on the layer itself (fuse_frozen_linear)
    head.forward = _pass_through
    try:
        yield
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def _pass_through(hidden_states: torch.Tensor) -> torch.Tensor:
    return hidden_states


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100
) -> torch.Tensor:
    """sum over rows of cross_entropy(hidden @ weight^T, targets), rows whose target is
    ignore_index left out; differentiable in `hidden` (the weight is frozen). Under CPU bf16
    autocast the logits are those of bf16 operands, as autocast's linear gives them (the
    softmax and the loss stay fp32, as transformers' loss takes them)."""
    return _LinearCrossEntropy.apply(hidden, weight, targets, ignore_index, autocast_dtype(hidden))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    @torch.autocast("cpu", enabled=False)  # the dtypes are settled by `compute`
    def forward(ctx, hidden, weight, targets, ignore_index, compute):
        kept = targets != ignore_index
        rows = hidden[kept] if compute is None else hidden[kept].to(compute)
        weight = weight if compute is None else weight.to(compute)
        loss, grad = _online_cross_entropy(rows, weight, targets[kept])
        grad_hidden = hidden.new_zeros(hidden.shape)
        grad_hidden[kept] = grad
        ctx.save_for_backward(grad_hidden)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_loss, None, None, None, None


def _online_cross_entropy(hidden, weight, targets) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and its gradient for `hidden`, the vocabulary in chunks
    (`online_softmax`): loss = sum(lse - logit[target]), d loss / d hidden = E[W] - W[target];
    both fp32 (a bf16 target logit is rounded as the chunk's logits are)."""
    lse, expected = online_softmax(hidden, weight)
    target_rows = weight[targets]
    # as the matmul gives the chunk's logits: products summed in fp32, rounded to hidden's dtype
    target_logits = torch.linalg.vecdot(hidden.float(), target_rows.float()).to(hidden.dtype)
    return lse.sum() - target_logits.float().sum(), expected.sub_(target_rows.float())


def online_softmax(hidden, weight, with_grad: bool = True):
    """(log-sum-exp of each row's logits hidden @ W^T, (rows, 1); and the softmax-weighted mean
    of W's rows, sum_v p_v W_v, which is what the logits' gradient reduces to, or None), without
    the (rows x vocabulary) logits in memory.

    For each chunk j of the vocabulary: logits_j, their row max m_j, p_j = exp(logits_j - M)
    against the running max M, and p_j @ W_j; what was summed before is rescaled by
    exp(M_old - M_new) when the max grows. At the end S = sum exp(logits - M) and
    D = sum exp(logits - M) @ W, so lse = M + log S and the weighted mean is D / S.
    """
    rows, fp32 = hidden.shape[0], torch.float32
    chunk = _vocab_chunk(rows)
    running_max = hidden.new_full((rows, 1), float("-inf"), dtype=fp32)
    sum_exp = hidden.new_zeros((rows, 1), dtype=fp32)
    grad = hidden.new_zeros(hidden.shape, dtype=fp32) if with_grad else None
    for start in range(0, weight.shape[0], chunk):
        w = weight[start : start + chunk]
        logits = _times_transposed(hidden, w).float()  # bf16 operands: bf16 logits, then fp32
        new_max = torch.maximum(running_max, logits.amax(dim=1, keepdim=True))
        rescale = (running_max - new_max).exp_()
        probs = logits.sub_(new_max).exp_()  # in place: the chunk stays in cache
        sum_exp.mul_(rescale).add_(probs.sum(dim=1, keepdim=True))
        if with_grad:
            grad.mul_(rescale).add_(_times_transposed(probs.to(w.dtype), w.t()))
        running_max = new_max
    return running_max + sum_exp.log(), grad.div_(sum_exp) if with_grad else None


def _vocab_chunk(rows: int) -> int:
    # a (rows x chunk) fp32 block of about 2.5 MB: in cache, and wide enough for a fast matmul
    return max(256, min(8192, 1 << max(0, (655_360 // max(rows, 1)).bit_length() - 1)))
