"""models/speed.py: the optimized paths compute the same losses and gradients as the plain ones."""

from __future__ import annotations

import copy
import json
import platform

import pytest
import torch
import torch.nn.functional as F

from tunesmith.config.methods import LoraMethod
from tunesmith.data.dataset import PackedCollator, SFTCollator
from tunesmith.data.render import IGNORE_INDEX
from tunesmith.models import speed
from tunesmith.models.methods import get_method
from tunesmith.utils.errors import ConfigError

lora = get_method("lora")  # the registered method form


def _lora_model(tiny_model_dir, dropout: float = 0.0, seed: int = 0, alpha: float = 8):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.config._attn_implementation_internal = "sdpa"
    model = lora.apply(model, LoraMethod(r=4, alpha=alpha, dropout=dropout), task="causal_lm")
    torch.manual_seed(seed)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; a non-zero B makes the update count
            param.data.normal_(0, 0.5)
    return model


def _examples(vocab: int, lengths: list[int], seed: int = 1) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * 2 + ids[2:]})
    return out


def _loss_and_grads(model, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    inputs = dict(batch)
    labels = inputs.pop("labels")
    logits = model(**inputs, use_cache=False).logits
    loss = F.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
    )
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads


def _assert_same(plain, fast, batch, tol: float = 1e-5) -> None:
    loss_a, grads_a = _loss_and_grads(plain, batch)
    loss_b, grads_b = _loss_and_grads(fast, batch)
    assert loss_b == pytest.approx(loss_a, rel=tol, abs=tol)
    assert grads_a.keys() == grads_b.keys()
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_sequence_lengths_reads_packed_rows():
    packed = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert speed.sequence_lengths(packed) == [3, 2, 4]
    assert speed.sequence_lengths(torch.arange(6)[None]) is None  # one example: nothing to split
    assert speed.sequence_lengths(torch.tensor([[0, 1, 3, 0, 1]])) is None  # not packing's layout
    assert speed.sequence_lengths(torch.tensor([[1, 2, 0, 1]])) is None  # does not start at 0
    assert speed.sequence_lengths(packed.expand(2, -1)) is None  # several rows: left to sdpa


def test_packed_attention_equals_block_diagonal_mask(tiny_model_dir, tiny_tokenizer):
    plain = _lora_model(tiny_model_dir)
    fast = copy.deepcopy(plain)
    assert speed.use_packed_attention(fast)
    assert fast.config._attn_implementation == speed.PACKED_ATTENTION
    batch = PackedCollator()(_examples(len(tiny_tokenizer), [7, 12, 5]))
    _assert_same(plain, fast, batch)
    # and it differs from letting the examples attend to each other, so the test can fail
    leaky = {k: v for k, v in batch.items() if k != "position_ids"}
    assert _loss_and_grads(plain, leaky)[0] != pytest.approx(_loss_and_grads(fast, batch)[0])


def test_padded_batches_keep_their_mask(tiny_model_dir, tiny_tokenizer):
    plain = _lora_model(tiny_model_dir)
    fast = speed.optimize_for_training(copy.deepcopy(plain))
    batch = SFTCollator(tiny_tokenizer.pad_token_id)(_examples(len(tiny_tokenizer), [9, 4, 6]))
    _assert_same(plain, fast, batch)


def test_fused_lora_gives_the_same_loss_and_gradients(tiny_model_dir, tiny_tokenizer):
    from peft.tuners.lora.layer import Linear as LoraLinear

    plain = _lora_model(tiny_model_dir, alpha=12)  # scaling 3: rounding differs from PEFT's
    fast = copy.deepcopy(plain)
    # 2 layers x 7 linear layers (q k v o gate up down), lm_head excluded by all-linear
    assert speed.fuse_lora_forward(fast) == 14
    batch = PackedCollator()(_examples(len(tiny_tokenizer), [10, 6]))
    _assert_same(plain, fast, batch)
    calls = []
    original = LoraLinear.forward
    LoraLinear.forward = lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    try:
        _loss_and_grads(fast, batch)
        assert calls == []  # the fused forward ran, not PEFT's
        _loss_and_grads(plain, batch)
        assert len(calls) == 14
    finally:
        LoraLinear.forward = original


def _off_by(grad: torch.Tensor, reference: torch.Tensor) -> float:
    return ((grad - reference).norm() / reference.norm()).item()


def test_fused_lora_under_bf16_autocast_is_autocasts_linear(tiny_model_dir, tiny_tokenizer):
    """Under CPU bf16 autocast the fused LoRA multiplies bf16 operands as autocast's linear does:
    bf16 outputs, and a loss and gradients as near the fp32 ones as PEFT's under autocast."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    plain = _lora_model(tiny_model_dir, alpha=12)
    fast = copy.deepcopy(plain)
    assert speed.fuse_lora_forward(fast) == 14
    batch = PackedCollator()(_examples(len(tiny_tokenizer), [10, 6]))
    loss_fp32, grads_fp32 = _loss_and_grads(plain, batch)
    with torch.autocast("cpu", torch.bfloat16):
        loss_peft, grads_peft = _loss_and_grads(plain, batch)
    dtypes = []
    hooks = [
        m.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
        for m in fast.modules()
        if isinstance(m, LoraLinear)
    ]
    calls = []
    original = LoraLinear.forward
    LoraLinear.forward = lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    try:
        with torch.autocast("cpu", torch.bfloat16):
            loss_fast, grads_fast = _loss_and_grads(fast, batch)
    finally:
        LoraLinear.forward = original
        for hook in hooks:
            hook.remove()
    assert calls == [] and dtypes == [torch.bfloat16] * 14  # fused, and in bf16
    assert loss_peft != loss_fp32  # autocast changes the arithmetic: the comparison is bf16's
    assert abs(loss_fast - loss_fp32) <= 2 * abs(loss_peft - loss_fp32) + 1e-3 * abs(loss_fp32)

    def joined(grads):
        return torch.cat([grads[name].flatten() for name in sorted(grads_fp32)])

    # all gradients together: as near fp32's as PEFT's (bf16 rounding of a tiny random model
    # moves single small gradients by 10-20% either way); each one: no layer far off
    peft_off = _off_by(joined(grads_peft), joined(grads_fp32))
    assert 0 < _off_by(joined(grads_fast), joined(grads_fp32)) <= 1.5 * peft_off + 2e-3
    for name, grad in grads_fp32.items():
        assert grads_fast[name].dtype == torch.float32, name
        peft_off, fast_off = _off_by(grads_peft[name], grad), _off_by(grads_fast[name], grad)
        assert fast_off <= 4 * peft_off + 2e-3, (name, fast_off, peft_off)


def test_fused_lora_applies_the_same_dropout(tiny_model_dir, tiny_tokenizer):
    plain = _lora_model(tiny_model_dir, dropout=0.3)
    fast = copy.deepcopy(plain)
    assert speed.fuse_lora_forward(fast) == 14
    batch = PackedCollator()(_examples(len(tiny_tokenizer), [8, 8]))
    plain.train()
    fast.train()
    torch.manual_seed(5)
    loss_a, grads_a = _loss_and_grads(plain, batch)
    torch.manual_seed(5)
    loss_b, grads_b = _loss_and_grads(fast, batch)
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_fused_lora_respects_disabled_adapters(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = speed.optimize_for_training(_lora_model(tiny_model_dir)).eval()
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([_examples(len(tiny_tokenizer), [10])[0]["input_ids"]])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
        expected = original(input_ids=ids).logits
    assert not torch.allclose(tuned, expected, atol=1e-4)  # B != 0: the adapter counts
    torch.testing.assert_close(base, expected, rtol=1e-5, atol=1e-5)


def test_dora_is_left_to_peft(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = lora.apply(model, LoraMethod(r=4, dropout=0.0, use_dora=True), task="causal_lm")
    assert speed.fuse_lora_forward(model) == 0


def test_compile_needs_decoder_layers():
    with pytest.raises(ConfigError, match="decoder layers"):
        speed.compile_decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.slow
def test_compiled_layers_give_the_same_loss(tiny_model_dir, tiny_tokenizer):
    plain = _lora_model(tiny_model_dir)
    fast = speed.optimize_for_training(copy.deepcopy(plain), compile=True)
    for lengths in ([7, 12, 5], [9, 3]):  # two row lengths: dynamic shapes, no wrong reuse
        batch = PackedCollator()(_examples(len(tiny_tokenizer), lengths))
        _assert_same(plain, fast, batch, tol=1e-4)


def test_optimize_false_leaves_the_model_alone(tiny_model_dir):
    model = speed.optimize_for_training(_lora_model(tiny_model_dir), optimize=False)
    assert model.config._attn_implementation == "sdpa"
    assert not any("forward" in vars(m) for m in model.modules())  # no instance-level forward


@pytest.mark.parametrize("rows, vocab", [(7, 1000), (300, 5003), (1, 300)])
def test_linear_cross_entropy_equals_logits_then_cross_entropy(rows, vocab):
    """Loss and gradient of the chunked online-softmax loss equal the plain two-step ones, with
    ignored rows, a vocabulary that is not a multiple of the chunk, and logits far apart."""
    g = torch.Generator().manual_seed(rows)
    weight = torch.randn(vocab, 16, generator=g)
    hidden = (torch.randn(rows, 16, generator=g) * 3).requires_grad_()
    targets = torch.randint(0, vocab, (rows,), generator=g)
    targets[::3] = IGNORE_INDEX
    plain = F.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    (grad_plain,) = torch.autograd.grad(plain, hidden)
    fused = speed.linear_cross_entropy(hidden, weight, targets, IGNORE_INDEX)
    (grad_fused,) = torch.autograd.grad(fused * 0.5, hidden)  # the upstream gradient scales
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5)
    torch.testing.assert_close(grad_fused, grad_plain * 0.5, rtol=1e-4, atol=1e-6)
    assert (grad_fused[::3] == 0).all()  # ignored rows get no gradient


def test_linear_cross_entropy_under_bf16_autocast_is_autocasts_loss():
    """Under CPU bf16 autocast the fused loss takes the logits of bf16 operands, as autocast's
    linear gives them to transformers' fp32 cross-entropy: the same loss and gradient."""
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(3001, 64, generator=g) * 0.2
    hidden = (torch.randn(50, 64, generator=g) * 2).requires_grad_()
    targets = torch.randint(0, 3001, (50,), generator=g)
    targets[::4] = IGNORE_INDEX
    exact = F.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    with torch.autocast("cpu", torch.bfloat16):
        logits = F.linear(hidden, weight)
        plain = F.cross_entropy(logits.float(), targets, reduction="sum")
        fused = speed.linear_cross_entropy(hidden, weight, targets, IGNORE_INDEX)
    assert logits.dtype == torch.bfloat16 and fused.dtype == torch.float32
    (grad_plain,) = torch.autograd.grad(plain, hidden)
    (grad_fused,) = torch.autograd.grad(fused, hidden)
    bf16_rounding = abs(plain.item() - exact.item())
    assert bf16_rounding > 0  # autocast's logits are not the fp32 ones...
    assert abs(fused.item() - plain.item()) < bf16_rounding / 10  # ...and the fused loss is theirs
    assert _off_by(grad_fused, grad_plain) < 1e-2
    assert (grad_fused[::4] == 0).all()


def test_linear_cross_entropy_of_no_trained_rows_is_zero():
    hidden = torch.randn(4, 8, requires_grad=True)
    loss = speed.linear_cross_entropy(hidden, torch.randn(50, 8), torch.full((4,), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and (hidden.grad == 0).all()


def _trainer_loss_and_grads(model, batch, fused: bool):
    from transformers import TrainingArguments

    from tunesmith.train.trainer import CausalLMTrainer

    args = TrainingArguments(output_dir="/tmp/unused", use_cpu=True, report_to=[])
    trainer = CausalLMTrainer(model=model, args=args, fused_loss=fused)
    assert (trainer.fused_head is not None) == fused
    model.train()
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads


@pytest.mark.parametrize("packing", [True, False])
def test_trainer_fused_loss_equals_the_plain_loss(tiny_model_dir, tiny_tokenizer, packing):
    model = speed.optimize_for_training(_lora_model(tiny_model_dir))
    head_forward = vars(model.get_output_embeddings()).get("forward")
    examples = _examples(len(tiny_tokenizer), [9, 14, 6])
    batch = PackedCollator()(examples) if packing else SFTCollator(0)(examples)
    loss_plain, grads_plain = _trainer_loss_and_grads(model, batch, fused=False)
    loss_fused, grads_fused = _trainer_loss_and_grads(model, batch, fused=True)
    assert loss_fused == pytest.approx(loss_plain, rel=1e-5)
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_fused[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert vars(model.get_output_embeddings()).get("forward") == head_forward  # itself again


def test_fused_loss_only_where_the_logits_are_plain(tiny_model_dir):
    model = _lora_model(tiny_model_dir)
    assert speed.fused_loss_head(model) is model.get_output_embeddings()
    model.config.final_logit_softcapping = 30.0  # Gemma-2 style: logits are not x @ W^T
    assert speed.fused_loss_head(model) is None
    model.config.final_logit_softcapping = None
    model.get_output_embeddings().weight.requires_grad_(True)  # a trained head needs its grad
    assert speed.fused_loss_head(model) is None


@pytest.fixture(params=["onednn", "mm"])
def kernel_choice(request, monkeypatch):
    """Run the test with each kernel `_times_transposed` may choose, whichever is faster here."""
    if request.param == "onednn" and not speed._onednn_works():
        pytest.skip("no working oneDNN linear kernel in this torch build")
    monkeypatch.setattr(speed, "_ONEDNN", [request.param == "onednn"])
    return request.param


def test_lora_over_a_biased_base_and_frozen_linears_keep_their_gradients(kernel_choice):
    """A LoRA layer whose base has a bias, next to a frozen plain linear layer and a trained
    one: outputs and the gradients of the input, A and B equal the library's."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 12), torch.nn.Linear(12, 5)
    )
    plain = get_peft_model(net, LoraConfig(r=2, lora_alpha=6, target_modules=["0"]))
    plain.base_model.model[3].weight.requires_grad_(True)  # trained: must keep its own forward
    for name, param in plain.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    fast = copy.deepcopy(plain)
    assert speed.fuse_lora_forward(fast) == 1
    # oneDNN: only the frozen layer 2; with torch.mm it keeps F.linear, which runs the same sgemm
    assert speed.fuse_frozen_linear(fast) == (1 if kernel_choice == "onednn" else 0)
    assert "forward" not in vars(fast.base_model.model[3])
    x = torch.randn(3, 4, 8)
    results = []
    for model in (plain, fast):
        inputs = x.clone().requires_grad_()
        out = model(inputs)
        out.pow(2).sum().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        results.append([out, inputs.grad, *grads])
    for expected, got in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_frozen_linear_unfrozen_after_fusing_trains_again(monkeypatch):
    """Progressive unfreezing makes a fused frozen layer trainable mid-run: it must get its
    weight and bias gradients from then on."""
    if not speed._onednn_works():
        pytest.skip("no working oneDNN linear kernel in this torch build: nothing is fused")
    monkeypatch.setattr(speed, "_ONEDNN", [True])  # fused even where torch.mm is faster
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 4).requires_grad_(False)
    reference = copy.deepcopy(layer).requires_grad_(True)
    assert speed.fuse_frozen_linear(layer) == 1
    layer.requires_grad_(True)
    x = torch.randn(3, 6)
    for model in (layer, reference):
        model(x).pow(2).sum().backward()
    assert layer.weight.grad is not None and layer.bias.grad is not None
    torch.testing.assert_close(layer.weight.grad, reference.weight.grad)
    torch.testing.assert_close(layer.bias.grad, reference.bias.grad)


def test_the_kernel_timing_picks_the_faster_one():
    def slow(x, w):  # the same product, three times over
        for _ in range(2):
            speed._mm_times_transposed(x, w)
        return speed._mm_times_transposed(x, w)

    small = (64, 96, 128)
    assert speed._runs_faster(speed._mm_times_transposed, slow, shape=small)
    assert not speed._runs_faster(slow, speed._mm_times_transposed, shape=small)


def test_times_transposed_equals_mm_for_transposed_views(kernel_choice):
    x, w = torch.randn(6, 10), torch.randn(7, 10)
    for a, b in ((x, w), (x.t().contiguous().t(), w), (x, w.t().contiguous().t())):
        torch.testing.assert_close(speed._times_transposed(a, b), a @ b.t())


# --- allocator ----------------------------------------------------------------------------------

_REUSE_PROBE = """
import ctypes, resource, sys, torch
from tunesmith.models.speed import keep_freed_memory
# glibc's documented default thresholds, pinned: setting them turns off its dynamic adjustment,
# which adapts to some allocation patterns after a few steps and to others never
libc = ctypes.CDLL("libc.so.6")
libc.mallopt(-3, 128 * 1024), libc.mallopt(-1, 128 * 1024)
if sys.argv[1] == "keep":
    assert keep_freed_memory()
faults = []
for _ in range(5):  # five steps, each writing and freeing 30 tensors of 8 MB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.ones(2 << 20) for _ in range(30)]
    del tensors
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults)
"""


def _step_faults(mode: str) -> list[int]:
    import ast
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _REUSE_PROBE, mode], capture_output=True, text=True, check=True
    )
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator tuning is glibc's")
def test_kept_freed_memory_is_reused_without_page_faults():
    plain, kept = _step_faults("plain"), _step_faults("keep")
    # glibc's defaults give the 240 MB back and fault it in again on every step
    assert min(plain[1:]) > plain[0] / 2
    # tuned: the same sizes reuse pages already mapped (under load the second step may still
    # fault some in: a fresh heap region when the first is busy), none from the third on
    assert sum(kept[1:]) < sum(plain[1:]) / 3
    assert sum(kept[2:]) < kept[0] / 10


def test_keep_freed_memory_changes_nothing_outside_glibc(monkeypatch):
    monkeypatch.setattr(speed.platform, "libc_ver", lambda: ("musl", "1.2"))
    monkeypatch.setattr(speed.ctypes, "CDLL", lambda name: pytest.fail("libc loaded"))
    assert speed.keep_freed_memory() is False


def test_a_resumed_run_multiplies_with_the_kernel_the_interrupted_one_chose(tmp_path, monkeypatch):
    from tunesmith.runs.folder import RunFolder
    from tunesmith.train.recipe import pin_matmul_kernel

    def timing_says(onednn_faster: bool):  # a fresh process: nothing chosen yet
        monkeypatch.setattr(speed, "_ONEDNN", [])
        monkeypatch.setattr(speed, "_runs_faster", lambda *args, **kwargs: onednn_faster)

    run = RunFolder(tmp_path)
    timing_says(onednn_faster=False)
    assert pin_matmul_kernel(run, resume=False) == "mm"
    assert json.loads((tmp_path / "speed.json").read_text()) == {"matmul_kernel": "mm"}
    timing_says(onednn_faster=True)  # the resumed process would time the other way
    assert pin_matmul_kernel(run, resume=True) == "mm"
    assert speed._ONEDNN == [False]
    if speed._onednn_works():
        timing_says(onednn_faster=True)
        assert pin_matmul_kernel(run, resume=False) == "onednn"  # a new run times afresh
        timing_says(onednn_faster=False)
        assert pin_matmul_kernel(run, resume=True) == "onednn"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_levers_run_in_the_trainings_precision_on_the_cpu(
    precision, tmp_path, tiny_model_dir, alpaca_file, monkeypatch
):
    """train.precision=bf16 on the CPU is the Trainer's autocast: the fused LoRA and the fused
    loss run inside it and multiply in bf16 (as every linear layer then does), in fp32 under
    fp32; neither stands aside."""
    from helpers import step_losses, train_tiny_recording_dtypes

    import tunesmith.train.trainer as trainer_module

    calls = {"lora": 0, "loss": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(speed._LoRALinear, "apply", counted("lora", speed._LoRALinear.apply))
    fused_loss = counted("loss", trainer_module.linear_cross_entropy)
    monkeypatch.setattr(trainer_module, "linear_cross_entropy", fused_loss)
    monkeypatch.setattr(speed, "_ONEDNN", [True] if speed._onednn_works() else [])
    result, dtypes = train_tiny_recording_dtypes(
        tmp_path, tiny_model_dir, alpaca_file, precision,
        "train.max_steps=2", f"train.precision={precision}", "train.optimize=true",
    )  # fmt: skip
    want = torch.bfloat16 if precision == "bf16" else torch.float32
    assert dtypes == {want}
    assert calls == {"lora": 2 * 14, "loss": 2}  # 2 steps x 14 LoRA layers; 2 fused losses
    assert len(step_losses(result.run.root)) == 2


def test_the_kernel_can_be_named_for_every_process(monkeypatch):
    """$TUNESMITH_MATMUL_KERNEL: runs in several processes that must compute alike."""
    monkeypatch.setattr(speed, "_ONEDNN", [])
    monkeypatch.setenv("TUNESMITH_MATMUL_KERNEL", "mm")
    monkeypatch.setattr(speed, "_runs_faster", lambda *args, **kwargs: True)  # timing says onednn
    assert speed.matmul_kernel() == "mm" and speed._ONEDNN == [False]
