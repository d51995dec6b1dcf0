"""The planner: counts from the config alone, memory arithmetic, advice, the CLI."""

from __future__ import annotations

import json
import time

import pytest
import torch
from pydantic import TypeAdapter
from typer.testing import CliRunner

from tunesmith.config.methods import MethodConfig
from tunesmith.config.schema import RunConfig
from tunesmith.plan.count import (
    Shapes,
    known_key,
    load_model_config,
    meta_model,
    shapes_of,
    total_parameters,
    trainable_parameters,
)
from tunesmith.plan.data import UNKNOWN
from tunesmith.plan.estimate import estimate, model_facts
from tunesmith.plan.hardware import GB, parse_hardware
from tunesmith.plan.memory import (
    Precision,
    Workload,
    activation_bytes,
    block_activations,
    estimate_memory,
)
from tunesmith.plan.planner import make_plan, plan_summary
from tunesmith.plan.seeds import seed_estimate_memory
from tunesmith.plan.time import flops_per_token

# the tiny Llama of conftest: hidden 32, intermediate 64, 4 heads of 8, 2 kv heads, 2 layers
TINY = Shapes(32, 64, 2, 4, 2, 8, 400, False, "llama")
METHODS = [
    {"type": "full"},
    {"type": "freeze", "trainable_layers": 1, "trainable_modules": ["lm_head"]},
    # the optimizer holds what the last stage trains from the start: the plan counts that
    {"type": "freeze", "trainable_layers": 0, "unfreeze_schedule": [{"at": 3, "layers": 1}]},
    {"type": "freeze", "trainable_layers": 1, "unfreeze_schedule": [{"at": 2, "layers": "all"}]},
    {"type": "lora", "r": 4},
    {"type": "lora", "r": 4, "init": "pissa"},
    {"type": "lora", "r": 4, "init": "olora", "use_rslora": True},
    {"type": "lora", "r": 4, "modules_to_save": ["lm_head"]},
    {"type": "lora", "r": 8, "use_dora": True, "target_modules": ["q_proj", "v_proj"]},
    {"type": "ia3"},
    {"type": "prefix", "num_virtual_tokens": 5},
    {"type": "prefix", "num_virtual_tokens": 5, "projection": True, "encoder_hidden_size": 16},
    {"type": "prompt", "num_virtual_tokens": 7},
    {"type": "ptuning", "num_virtual_tokens": 6},
    {"type": "ptuning", "num_virtual_tokens": 6, "encoder": "lstm", "encoder_hidden_size": 8},
    {"type": "adapter", "adapter_size": 8},
    {"type": "adapter", "reduction_factor": 4, "placement": "ffn"},
    {"type": "hybrid", "r": 4, "adapter_size": 8},
    {"type": "hybrid", "budget": 5000},
]


def _method(fields: dict):
    return TypeAdapter(MethodConfig).validate_python(fields)


def test_lora_count_is_hand_computed():
    from conftest import build_tiny_llama

    meta = meta_model(build_tiny_llama(400).config)
    # per layer r x (in + out): q 32+32, k 32+16, v 32+16, o 32+32, gate/up 32+64, down 64+32
    per_layer = 64 + 48 + 48 + 64 + 96 + 96 + 96
    assert trainable_parameters(meta, _method({"type": "lora", "r": 4})) == 4 * per_layer * 2
    # DoRA adds one magnitude per output feature of each target
    dora = _method({"type": "lora", "r": 4, "use_dora": True})
    outputs = (32 + 16 + 16 + 32 + 64 + 64 + 32) * 2
    assert trainable_parameters(meta, dora) == 4 * per_layer * 2 + outputs


@pytest.mark.parametrize("fields", METHODS, ids=lambda f: "-".join(str(v) for v in f.values()))
def test_meta_counts_equal_the_real_methods(fields):
    from conftest import build_tiny_llama

    from tunesmith.models.methods import count_parameters, get_method

    cfg = _method(fields)
    real = get_method(cfg.type).apply(build_tiny_llama(400), cfg)
    trainable, total = count_parameters(real)
    meta = meta_model(build_tiny_llama(400).config)
    assert trainable_parameters(meta, cfg) == trainable
    if cfg.type in ("full", "freeze"):
        assert total_parameters(meta) == total


@pytest.mark.parametrize("init", ["default", "pissa", "olora"])
def test_qlora_is_counted_on_the_meta_path_as_the_lora_it_trains(init):
    """QLoRA cannot be applied without CUDA; its plan counts the LoRA it trains, no GPU read."""
    from conftest import build_tiny_llama

    from tunesmith.models.methods import count_parameters, get_method

    lora = _method({"type": "lora", "r": 4, "init": init, "target_modules": ["q_proj"]})
    qlora = _method({"type": "qlora", "r": 4, "init": init, "target_modules": ["q_proj"]})
    real = get_method("lora").apply(build_tiny_llama(400), lora)
    meta = meta_model(build_tiny_llama(400).config)
    assert trainable_parameters(meta, qlora) == count_parameters(real)[0] == 2 * 4 * (32 + 32)


def test_70b_planned_from_its_config_alone():
    start = time.perf_counter()
    facts = model_facts("meta-llama/Meta-Llama-3-70B-Instruct")
    assert time.perf_counter() - start < 10
    assert facts.total == 70_553_706_496  # the published Llama-3-70B count
    assert next(facts.meta.parameters()).device.type == "meta"
    config = RunConfig.model_validate({"model": {"name_or_path": "llama-3-70b"}})
    gpu = estimate(facts, config, "cuda")
    assert gpu.weights == pytest.approx(facts.total * 2 + facts.trainable(config.method) * 4)


def test_known_names_are_normalised():
    assert known_key("Qwen/Qwen2.5-7B-Instruct") == "qwen2.5-7b"
    assert known_key("meta-llama/Llama-2-7b-hf") == "llama-2-7b"
    assert known_key("mistralai/Mistral-7B-v0.1") == "mistral-7b"
    assert known_key("someone/unknown-3b") is None
    assert shapes_of(load_model_config("qwen2.5-0.5b")).kv_heads == 2


def test_optimizer_and_gradient_bytes():
    work = Workload(batch=1, seq=8)
    full = _method({"type": "full"})
    fp32 = estimate_memory(TINY, 10_000, 10_000, full, work, "cpu", Precision(4, 4))
    assert (fp32.gradients, fp32.optimizer, fp32.weights) == (40_000, 80_000, 40_000)
    bf16 = estimate_memory(TINY, 10_000, 10_000, full, work, "cuda", Precision(2, 2))
    assert (bf16.gradients, bf16.optimizer) == (20_000, 40_000)  # AdamW states: param dtype
    ds = estimate_memory(
        TINY, 10_000, 10_000, full, work, "cuda", Precision(2, 2, None, True, True)
    )
    assert (ds.master_weights, ds.optimizer) == (40_000, 80_000)  # ZeRO: fp32 copy + states
    lora = _method({"type": "lora", "r": 4})
    peft = estimate_memory(TINY, 10_000, 100, lora, work, "cuda", Precision(2, 2))
    # base in bf16, the adapter in fp32 (PEFT upcasts it), grads and states for it alone
    assert (peft.weights, peft.gradients, peft.optimizer) == (20_400, 400, 800)


def test_quantized_base_weights():
    lora = _method({"type": "qlora", "r": 4})
    work = Workload(batch=1, seq=8)
    est = estimate_memory(TINY, 10_000, 0, lora, work, "cuda", Precision(2, 2, 4), 6400)
    # 3600 unquantized at 2 bytes; 6400 at 0.5 + 1/64 + 4/(64*256) bytes (NF4, double quant)
    assert est.weights == pytest.approx(3600 * 2 + 6400 * (0.5 + 1 / 64 + 4 / 16384), abs=1)


def test_activation_formula_by_hand():
    # trained block: 5h + (q + 2kv + heads + q) + q + 4i = 160 + 100 + 32 + 256
    assert block_activations(TINY, "trained") == 548
    # frozen block: 6h (4h saved + 2h backward workspace) + attention + 3i = 192 + 100 + 192
    assert block_activations(TINY, "frozen") == 484
    # packed row with an explicit mask: + T mask columns + expanded grouped k/v (2 (q - kv))
    assert block_activations(TINY, "trained", masked_tokens=64) == 548 + 64 + 32
    work = Workload(batch=2, seq=16, packed=False)
    full = _method({"type": "full"})
    plain = estimate_memory(TINY, 1, 1, full, work, "cpu", Precision(4, 4))
    checkpointed = estimate_memory(
        TINY, 1, 1, full, Workload(2, 16, False, True), "cpu", Precision(4, 4)
    )
    stem = 4 * 32
    assert plain.activations == (2 * (548 + 16 + 32) + stem) * 32 * 4
    # checkpointing keeps each block's input (3h in RSS) and recomputes one block at a time
    assert checkpointed.activations == (2 * 3 * 32 + (548 + 16 + 32) + stem) * 32 * 4


def _saved_bytes(model, **inputs) -> int:
    """Bytes of the tensors autograd keeps for backward in one forward pass (weights excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**inputs)
    return sum(storages.values())


def test_activation_formula_matches_saved_tensors():
    """The formula against what autograd really keeps, on a Llama block of SmolLM2's shape."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def saved(layers: int) -> int:
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=64,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=layers,
            num_attention_heads=9,
            num_key_value_heads=3,
            head_dim=64,
        )
        model = LlamaForCausalLM(cfg).train()
        return _saved_bytes(model, input_ids=torch.randint(0, 64, (1, 64)), use_cache=False)

    per_layer_token = (saved(2) - saved(1)) / 64 / 4  # fp32 elements
    shapes = Shapes(576, 1536, 2, 9, 3, 64, 64, False, "llama")
    assert block_activations(shapes, "trained") == pytest.approx(per_layer_token, rel=0.05)


def _bert_layer_saved(dropout: float, length: int, grouped: bool = False) -> int:
    """Bytes one BERT layer (hidden 64, 4 heads, FFN 128) keeps for the backward in training,
    on 2 rows of `length` tokens: a 2-layer model's saved tensors less a 1-layer one's.
    grouped: with models/speed.py's attention (attention dropout on the grouped path)."""
    from transformers import BertConfig, BertForSequenceClassification

    from tunesmith.models.speed import use_packed_attention

    def saved(layers: int) -> int:
        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=100,
            hidden_size=64,
            num_hidden_layers=layers,
            num_attention_heads=4,
            intermediate_size=128,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=dropout,
            num_labels=3,
        )
        model = BertForSequenceClassification(config).train()
        if grouped:
            assert use_packed_attention(model)
        return _saved_bytes(model, input_ids=torch.randint(0, 100, (2, length)))

    return saved(2) - saved(1)


def test_attention_probabilities_kept_with_dropout_on_cpu():
    """An encoder with attention dropout runs attention on the math path on CPU and keeps its
    probabilities: the formula's terms against what autograd keeps (dropout on minus off, and
    the block without dropout)."""
    length = 128
    on, off = (_bert_layer_saved(dropout, length) for dropout in (0.1, 0.0))
    shapes = Shapes(64, 128, 2, 4, 4, 16, 100, False, "bert", 512, True, 0.1, 0.0)
    extra = block_activations(shapes, "trained", probs_keys=length) - block_activations(
        shapes, "trained"
    )
    assert extra == pytest.approx((on - off) / (2 * length) / 4, rel=0.02)
    # the encoder block itself: saved tensors are the formula less the backward workspace
    saved_only = block_activations(shapes, "trained") - (2 * 64 + 2 * 128)
    assert saved_only == pytest.approx(off / (2 * length) / 4, rel=0.02)
    work = Workload(batch=16, seq=512, packed=False)
    cpu = activation_bytes(shapes, _method({"type": "lora"}), work, 4, "cpu")
    cuda = activation_bytes(shapes, _method({"type": "lora"}), work, 4, "cuda")
    assert cpu - cuda == 2 * 3 * 4 * 512 * work.tokens * 4  # layers x 3 x heads x keys x tokens


def test_grouped_dropout_attention_keeps_only_its_boolean_mask():
    """train.optimize routes attention dropout on the CPU to models/dropout_attention.py, which
    keeps one byte per head and key (its mask) where SDPA's math path kept three floats."""
    length = 128
    on, off = (_bert_layer_saved(dropout, length, grouped=True) for dropout in (0.1, 0.0))
    shapes = Shapes(64, 128, 2, 4, 4, 16, 100, False, "bert", 512, True, 0.1, 0.0)
    grouped = block_activations(shapes, "trained", probs_keys=length, kept_per_key=0.25)
    # saved tensors: the mask; the backward's workspace (not a saved tensor) is h + i smaller
    extra = grouped - block_activations(shapes, "trained") + (64 + 128)
    assert extra == pytest.approx((on - off) / (2 * length) / 4, rel=0.05)
    lora = _method({"type": "lora"})
    work = Workload(batch=16, seq=512, packed=False)
    math_path = activation_bytes(shapes, lora, work, 4, "cpu")
    optimized = Workload(batch=16, seq=512, packed=False, optimize=True)
    assert math_path - activation_bytes(shapes, lora, optimized, 4, "cpu") == (
        2 * (3 - 0.25) * 4 * 512 * work.tokens * 4  # layers x (3 - 1/4) x heads x keys x tokens
    )
    # under bf16 autocast the grouped path stands aside: SDPA's math path again
    autocast = activation_bytes(shapes, lora, optimized, 2, "cpu", autocast=True)
    assert autocast == activation_bytes(shapes, lora, work, 2, "cpu")


def test_memory_directions():
    facts = model_facts("llama-2-7b")
    config = RunConfig.model_validate(
        {"model": {"name_or_path": "llama-2-7b"}, "data": {"cutoff_len": 1024}}
    )
    full = estimate(facts, config, "cuda", method=_method({"type": "full"}))
    lora = estimate(facts, config, "cuda", method=_method({"type": "lora", "r": 8}))
    qlora = estimate(facts, config, "cuda", method=_method({"type": "qlora", "r": 8}))
    gc = config.model_copy(
        update={"train": config.train.model_copy(update={"gradient_checkpointing": True})}
    )
    lora_gc = estimate(facts, gc, "cuda", method=_method({"type": "lora", "r": 8}))
    assert qlora.total < lora.total < full.total
    assert lora_gc.activations < lora.activations / 5
    assert lora.gradients + lora.optimizer < (full.gradients + full.optimizer) / 100


def test_flops_per_token():
    # full: 6N plus attention (2 x layers x seq x q, three times); PEFT: 4N + 2 x trainable
    assert flops_per_token(1000, 1000, False, False, 2, 8, 16) == 6000 + 3 * 512
    assert flops_per_token(1000, 10, True, False, 2, 8, 16) == 4020 + 3 * 512
    assert flops_per_token(1000, 1000, False, True, 2, 8, 16) == 8000 + 4 * 512


def test_seed_examples_reproduced():
    assert seed_estimate_memory(7, "fp16", 1, 2048, False)["total"] == pytest.approx(85.119, 1e-4)
    assert seed_estimate_memory(7, "fp16", 4, 2048, True)["total"] == pytest.approx(18.826, 1e-4)
    assert seed_estimate_memory(7, "int4", 4, 2048, True)["total"] == pytest.approx(8.274, 1e-4)


def test_advice_when_full_does_not_fit_on_a_24gb_gpu():
    from tunesmith.plan.advice import HEADROOM

    config = RunConfig.model_validate(
        {
            "model": {"name_or_path": "llama-2-7b"},
            "method": {"type": "full"},
            "data": {"cutoff_len": 1024},
            "train": {"batch_size": 4},
        }
    )
    gpu = parse_hardware("cuda:24")
    plan = make_plan(config, probe=False, hardware=gpu, read_data=False)
    advice = plan.advice
    assert not plan.fits and advice.warnings
    assert advice.recommended.method in ("lora", "qlora") and advice.recommended.fits
    assert advice.recommended.memory <= 24 * GB * HEADROOM
    # the fixes, applied as overrides, give a job that fits
    from tunesmith.config.load import load_config

    fixed = load_config(
        None,
        [
            "model.name_or_path=llama-2-7b",
            "data.cutoff_len=1024",
            "method.type=full",
            "train.batch_size=4",
            *advice.fixes,
        ],
    )
    assert any(f.startswith("method.type=") for f in advice.fixes)
    assert estimate(plan.facts, fixed, "cuda").total <= 24 * GB * HEADROOM


def test_advice_keeps_full_when_it_fits():
    config = RunConfig.model_validate({"model": {"name_or_path": "qwen2.5-0.5b"}})
    plan = make_plan(config, probe=False, hardware=parse_hardware("cuda:80"), read_data=False)
    assert plan.fits and not plan.advice.fixes
    memory = make_plan(config, "memory", False, parse_hardware("cuda:80"), read_data=False)
    assert memory.advice.recommended.method == "qlora"


def test_cli_prints_a_plan_and_writes_json(tiny_model_dir, alpaca_file, tmp_path):
    from tunesmith.cli.main import app
    from tunesmith.models.methods import count_parameters

    out = tmp_path / "plan.json"
    result = CliRunner().invoke(
        app,
        [
            "plan",
            f"model.name_or_path={tiny_model_dir}",
            f"data.train=[{alpaca_file}]",
            "method.type=lora",
            "method.r=4",
            "--no-probe",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "trains 4,096 of" in result.output and "advice" in result.output
    saved = json.loads(out.read_text())
    from conftest import build_tiny_llama

    assert saved["parameters"]["total"] == count_parameters(build_tiny_llama(400))[1]
    assert saved["data"]["records"] == 8
    assert 0 < saved["data"]["trained_fraction"] < 1  # prompts are not trained
    assert saved["time"]["method"] == "flops"


def test_cli_bad_goal_is_one_clear_line(tiny_model_dir):
    from tunesmith.cli.main import app

    args = ["plan", f"model.name_or_path={tiny_model_dir}", "--goal", "fast", "--no-probe"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--goal: expected quality, speed or memory" in result.output


def test_probe_measures_the_tiny_model(tiny_model_dir):
    config = RunConfig.model_validate(
        {
            "model": {"name_or_path": str(tiny_model_dir)},
            "method": {"type": "lora", "r": 4},
            "data": {"cutoff_len": 32},
            "train": {"max_steps": 10, "batch_size": 2},
        }
    )
    plan = make_plan(config, probe=True, read_data=False)
    t = plan.time
    assert t.method == "probe" and t.steps == 10
    assert t.tokens == 10 * 2 * 32 and t.seconds == pytest.approx(t.tokens / t.tokens_per_second)


def test_plan_summary_names_counts_and_memory(tiny_model_dir):
    config = RunConfig.model_validate(
        {"model": {"name_or_path": str(tiny_model_dir)}, "method": {"type": "lora", "r": 4}}
    )
    summary = plan_summary(config)
    assert "lora trains 4,096 of" in summary and "peak memory" in summary
    broken = config.model_copy(
        update={
            "model": config.model.model_copy(
                update={"name_or_path": str(tiny_model_dir / "missing")}
            )
        }
    )
    assert plan_summary(broken).startswith("plan: no estimate")


def test_hardware_spec_errors():
    assert parse_hardware("cuda:80x8").gpus == 8
    assert parse_hardware("cpu:16").memory == 16 * GB
    with pytest.raises(Exception, match="cpu:<GB> or cuda:<GB>"):
        parse_hardware("tpu:8")


def test_unknown_data_is_worst_case():
    assert UNKNOWN.trained_fraction == 1.0 and UNKNOWN.tokens is None


def test_encoder_classifier_counts_include_the_head():
    from conftest import tiny_bert_config
    from transformers import AutoModelForSequenceClassification

    from tunesmith.models.methods import count_parameters, get_method
    from tunesmith.plan.estimate import ModelFacts

    cfg = tiny_bert_config()
    lora = _method({"type": "lora", "r": 4})
    real = get_method("lora").apply(
        AutoModelForSequenceClassification.from_config(cfg), lora, task="seq_cls"
    )
    meta = meta_model(cfg, classifier=True)
    facts = ModelFacts("tiny-bert", shapes_of(cfg), total_parameters(meta), 0, meta, "seq_cls")
    assert facts.trainable(lora) == count_parameters(real)[0]


@pytest.mark.parametrize("target_modules", ["all-linear", ["query", "value"], ["dense"]])
def test_lora_targets_of_an_encoder_are_the_linears_peft_adapts(target_modules):
    """The planner's LoRA terms for a BERT block name the linears PEFT adapts there (an
    ungated MLP: a Llama block's gate would be counted on top)."""
    from conftest import tiny_bert_config
    from peft import get_peft_model
    from peft.tuners.lora import LoraLayer
    from transformers import BertForSequenceClassification

    from tunesmith.config.methods import LoraMethod
    from tunesmith.models.methods.lora import lora_config, targets

    model = BertForSequenceClassification(tiny_bert_config(intermediate_size=96))
    method = LoraMethod(target_modules=target_modules)
    adapted = get_peft_model(model, lora_config(method, task="seq_cls"))
    first_layer = sorted(
        (module.in_features, module.out_features)
        for name, module in adapted.named_modules()
        if isinstance(module, LoraLayer) and ".layer.0." in name
    )
    planned = targets(shapes_of(model.config), target_modules)
    assert sorted((n_in, n_out) for n_in, n_out, _ in planned) == first_layer
