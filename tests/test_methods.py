"""The method zoo on a tiny Llama (hidden 32, FFN 64, 4 heads of 8, 2 KV heads, 2 layers) and a
tiny BERT classifier: hand-computed trainable counts, what one step changes, save/load/merge
round trips, the PEFT flags, LoRA+, progressive unfreezing and the QLoRA guard."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_llama, tiny_bert_config
from transformers import TrainingArguments

from tunesmith.config import methods as cfgs
from tunesmith.config.load import load_config
from tunesmith.models.methods import count_parameters, get_method, hybrid
from tunesmith.runs.trained import open_run
from tunesmith.train.trainer import CausalLMTrainer
from tunesmith.utils.errors import ConfigError, ModelError

VOCAB = 400
# Per layer: q 32x32, k and v 32x16, o 32x32, gate and up 32x64, down 64x32, two norms of 32.
LORA4 = 2 * 4 * (64 + 48 + 48 + 64 + 96 + 96 + 96)  # r x (in + out) per linear
CASES = {
    "lora": (cfgs.LoraMethod(r=4), LORA4),
    "dora": (cfgs.LoraMethod(r=4, use_dora=True), LORA4 + 2 * (32 + 16 + 16 + 32 + 64 + 64 + 32)),
    "ia3": (cfgs.IA3Method(), 2 * (16 + 16 + 64)),  # k and v outputs, down_proj input
    "prefix": (cfgs.PrefixMethod(num_virtual_tokens=3), 2 * 2 * 3 * 16),  # layers, k/v, tokens
    "prompt": (cfgs.PromptMethod(num_virtual_tokens=3), 3 * 32),
    # embedding, then Linear 32->16, 16->16, 16->32 with biases
    "ptuning": (
        cfgs.PTuningMethod(num_virtual_tokens=3, encoder_hidden_size=16),
        3 * 32 + (32 * 16 + 16) + (16 * 16 + 16) + (16 * 32 + 32),
    ),
    "adapter": (cfgs.AdapterMethod(adapter_size=4), 4 * (32 * 4 + 4 + 4 * 32 + 32)),
    "hybrid": (
        cfgs.HybridMethod(r=2, adapter_size=4),
        2 * 2 * (64 + 48 + 48 + 64) + 2 * (32 * 4 + 4 + 4 * 32 + 32),
    ),
    "freeze": (cfgs.FreezeMethod(trainable_layers=1), 2 * 1024 + 2 * 512 + 3 * 2048 + 2 * 32),
    "full": (cfgs.FullMethod(), None),
}


def _apply(case: str, seed: int = 0):
    cfg, _ = CASES[case]
    model = build_tiny_llama(VOCAB, seed=seed)
    return get_method(cfg.type).apply(model, cfg), cfg


def _reload(base, folder):
    """The saved artifact onto a fresh base, through the run owner (the marker says the method)."""
    return open_run(folder).attach(base)


def _ids() -> torch.Tensor:
    return torch.tensor([[5, 17, 42, 99, 7, 250, 3, 11], [8, 9, 10, 11, 12, 13, 14, 15]])


def _logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=_ids()).logits


def _perturb(model) -> None:
    """Random trained values: zero-initialised parts (LoRA B, adapter up) would hide bugs."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("case", sorted(CASES))
def test_trainable_count_matches_hand_computation(case):
    model, _ = _apply(case)
    trainable, total = count_parameters(model)
    expected = CASES[case][1]
    assert trainable == (total if expected is None else expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_step_changes_exactly_the_trainable_parameters(case):
    model, _ = _apply(case)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = _ids()
    logits = model(input_ids=ids).logits[:, -ids.shape[1] :]  # prompt methods put theirs first
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    # LoRA A gets no gradient while B is zero; a zero-initialised adapter's down likewise
    untouched_at_start = {n for n in trainable if "lora_A" in n or ".down." in n}
    assert trainable - untouched_at_start <= changed <= trainable


@pytest.mark.parametrize("case", ["lora", "dora", "ia3", "prefix", "prompt", "ptuning"])
def test_peft_adapter_reloads_with_identical_logits(case, tmp_path, tiny_tokenizer):
    model, cfg = _apply(case)
    _perturb(model)
    expected = _logits(model)
    get_method(cfg.type).save(model, tiny_tokenizer, tmp_path, cfg)
    reloaded = _reload(build_tiny_llama(VOCAB), tmp_path)
    assert torch.equal(_logits(reloaded), expected)


@pytest.mark.parametrize("case", ["adapter", "hybrid"])
def test_own_adapters_reload_with_identical_logits(case, tmp_path, tiny_tokenizer):
    model, cfg = _apply(case)
    base_logits = _logits(build_tiny_llama(VOCAB))
    assert torch.allclose(_logits(model), base_logits)  # zero-initialised up: unchanged start
    _perturb(model)
    expected = _logits(model)
    assert not torch.allclose(expected, base_logits)
    get_method(cfg.type).save(model, tiny_tokenizer, tmp_path, cfg)
    reloaded = _reload(build_tiny_llama(VOCAB), tmp_path)
    assert torch.equal(_logits(reloaded), expected)


@pytest.mark.parametrize(
    "cfg",
    [
        cfgs.LoraMethod(r=4),
        cfgs.LoraMethod(r=4, use_dora=True),
        cfgs.LoraMethod(r=4, use_rslora=True),
        cfgs.IA3Method(),
    ],
    ids=["lora", "dora", "rslora", "ia3"],
)
def test_merge_gives_the_adapter_logits(cfg):
    method = get_method(cfg.type)
    model = method.apply(build_tiny_llama(VOCAB), cfg)
    _perturb(model)
    expected = _logits(model)
    merged = method.merge(model)
    assert not any("lora" in n or "ia3" in n for n, _ in merged.named_parameters())
    assert torch.allclose(_logits(merged), expected, atol=1e-5)


@pytest.mark.parametrize("case", ["adapter", "hybrid", "prefix", "prompt", "ptuning"])
def test_unmergeable_methods_say_so(case):
    model, cfg = _apply(case)
    method = get_method(cfg.type)
    assert method.mergeable is False
    with pytest.raises(ModelError, match=f"method {case}: .*cannot be merged"):
        method.merge(model)


def test_lora_variant_flags_reach_the_peft_config():
    cfg = cfgs.LoraMethod(r=4, use_dora=True, use_rslora=True, init="pissa_fast")
    peft_cfg = get_method("lora").apply(build_tiny_llama(VOCAB), cfg).peft_config["default"]
    assert (peft_cfg.use_dora, peft_cfg.use_rslora) == (True, True)
    assert peft_cfg.init_lora_weights == "pissa_niter_16"
    olora = get_method("lora").apply(build_tiny_llama(VOCAB), cfgs.LoraMethod(init="olora"))
    assert olora.peft_config["default"].init_lora_weights == "olora"


@pytest.mark.filterwarnings("ignore:.*changes the base weights:UserWarning")
@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_pissa_and_olora_adapters_load_onto_the_unchanged_base(init, tmp_path, tiny_tokenizer):
    """PiSSA/OLoRA rewrite the base weights; the saved adapter is converted to apply to the
    original base, so it reloads onto a fresh one with the trained logits."""
    lora, cfg = get_method("lora"), cfgs.LoraMethod(r=4, dropout=0.0, init=init)
    model = lora.apply(build_tiny_llama(VOCAB), cfg)
    base_q = build_tiny_llama(VOCAB).model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(model.get_base_model().model.layers[0].self_attn.q_proj.weight, base_q)
    _perturb(model)
    expected = _logits(model)
    lora.save(model, tiny_tokenizer, tmp_path, cfg)
    reloaded = _reload(build_tiny_llama(VOCAB), tmp_path)
    assert torch.allclose(_logits(reloaded), expected, atol=1e-4)


def test_loraplus_puts_b_at_lr_times_ratio(tmp_path):
    model = get_method("lora").apply(build_tiny_llama(VOCAB), cfgs.LoraMethod(r=4))
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, report_to=[])
    trainer = CausalLMTrainer(model=model, args=args, loraplus_lr_ratio=16.0)
    lr_of = {id(p): g["lr"] for g in trainer.create_optimizer().param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    a_lrs = {lr_of[id(p)] for n, p in named.items() if "lora_A" in n}
    b_lrs = {lr_of[id(p)] for n, p in named.items() if "lora_B" in n}
    assert a_lrs == {1e-3}
    assert sorted(b_lrs) == pytest.approx([16e-3])
    assert len(lr_of) == 2 * 14  # A and B of the 14 linears, nothing else


def test_loraplus_and_layerwise_decay_are_exclusive(tmp_path):
    model = get_method("lora").apply(build_tiny_llama(VOCAB), cfgs.LoraMethod(r=4))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    with pytest.raises(ConfigError, match="use one of them"):
        CausalLMTrainer(model=model, args=args, loraplus_lr_ratio=4.0, layerwise_lr_decay=0.9)


@pytest.mark.parametrize("case", ["lora", "prefix", "prompt", "ptuning"])
def test_trainer_loss_equals_the_models_own_loss(case, tmp_path):
    """Our loss asks for the logits of trained positions only; prompt methods put their
    virtual tokens first, so the positions shift. PEFT's loss (labels given) is the reference."""
    model, _ = _apply(case)
    _perturb(model)
    model.eval()
    ids = _ids()
    labels = ids.clone()
    labels[:, :3] = -100
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels[1, 6:] = -100
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = CausalLMTrainer(model=model, args=args)
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    with torch.no_grad():
        ours = trainer.compute_loss(model, inputs)
        reference = model(**inputs, use_cache=False).loss
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)


def test_allocate_parameters_splits_the_budget():
    # LoRA per rank: 2 layers x (q 64 + k 48 + v 48 + o 64) = 448; 2000 // 448 = 4.
    # Adapters: 2 x (65 s + 32) <= 1000 -> s = (1000 - 64) // 130 = 7.
    assert hybrid.allocate_parameters(3000, build_tiny_llama(VOCAB)) == (4, 7)
    model = get_method("hybrid").apply(build_tiny_llama(VOCAB), cfgs.HybridMethod(budget=3000))
    trainable, _ = count_parameters(model)
    assert trainable == 4 * 448 + 2 * (7 * 65 + 32) <= 3000


# --- classification (seq_cls) on a tiny BERT ---------------------------------------------------


def _bert():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config())


HEAD = 32 * 3 + 3


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (cfgs.LoraMethod(r=4, target_modules=["query", "value"]), 2 * 2 * 4 * 64 + HEAD),
        (cfgs.AdapterMethod(adapter_size=4, placement="ffn"), 2 * 292 + HEAD),
        (cfgs.PromptMethod(num_virtual_tokens=3), 3 * 32 + HEAD),
        (cfgs.FreezeMethod(trainable_layers=0, trainable_modules=["pooler"]), 32 * 33 + HEAD),
    ],
    ids=["lora", "adapter", "prompt", "freeze"],
)
def test_seq_cls_trains_the_classifier_head_too(cfg, expected, tmp_path, tiny_tokenizer):
    model = get_method(cfg.type).apply(_bert(), cfg, task="seq_cls")
    assert count_parameters(model)[0] == expected
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("classifier" in n for n in trained)
    ids = torch.randint(0, 100, (2, 6))
    loss = model(input_ids=ids, labels=torch.tensor([0, 2])).loss
    loss.backward()
    assert all(
        p.grad is not None
        for n, p in model.named_parameters()
        if "classifier" in n and p.requires_grad
    )
    if cfg.type in ("lora", "adapter"):
        _perturb(model)
        model.eval()
        with torch.no_grad():
            expected_logits = model(input_ids=ids).logits
        get_method(cfg.type).save(model, tiny_tokenizer, tmp_path, cfg, "seq_cls")
        reloaded = _reload(_bert(), tmp_path).eval()
        with torch.no_grad():
            assert torch.equal(reloaded(input_ids=ids).logits, expected_logits)


# --- progressive unfreezing --------------------------------------------------------------------


def test_progressive_unfreezing_widens_training_at_the_scheduled_steps(tmp_path):
    from transformers import TrainerCallback

    from tunesmith.data.dataset import PackedCollator

    cfg = cfgs.FreezeMethod(
        trainable_layers=0,
        trainable_modules=["lm_head"],
        unfreeze_schedule=[{"at": 2, "layers": 1}, {"at": 3, "layers": "all"}],
    )
    model = get_method("freeze").apply(build_tiny_llama(VOCAB), cfg)
    changed_per_step: list[set[str]] = []

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

        def on_step_end(self, args, state, control, model=None, **kwargs):
            now = dict(model.named_parameters())
            changed_per_step.append(
                {n for n, p in self.before.items() if not torch.equal(p, now[n])}
            )

    example = {"input_ids": list(range(5, 21)), "labels": list(range(5, 21))}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        learning_rate=1e-2,
        per_device_train_batch_size=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = CausalLMTrainer(
        model=model,
        args=args,
        train_dataset=[example] * 4,
        data_collator=PackedCollator(),
        # unfreezing first: Record sees it
        callbacks=[*get_method("freeze").callbacks(model), Record()],
    )
    trainer.train()
    layer1 = {n for n, _ in model.named_parameters() if ".layers.1." in n}
    everything = {n for n, _ in model.named_parameters()}
    assert changed_per_step[0] == changed_per_step[1] == {"lm_head.weight"}
    assert changed_per_step[2] == layer1 | {"lm_head.weight"}
    assert changed_per_step[3] == everything


def test_unfreeze_schedule_must_only_widen():
    with pytest.raises(ValueError, match="stages only unfreeze"):
        cfgs.FreezeMethod(trainable_layers=2, unfreeze_schedule=[{"at": 5, "layers": 1}])
    with pytest.raises(ValueError, match="rising order"):
        cfgs.FreezeMethod(unfreeze_schedule=[{"at": 5, "layers": 3}, {"at": 5, "layers": 4}])


# --- config and guards -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "cls"),
    [
        ("method.type=ia3", cfgs.IA3Method),
        ("method.type=prefix", cfgs.PrefixMethod),
        ("method.type=ptuning", cfgs.PTuningMethod),
        ("method.type=adapter", cfgs.AdapterMethod),
        ("method.type=hybrid", cfgs.HybridMethod),
        ("method.type=qlora", cfgs.QLoraMethod),
    ],
)
def test_method_type_selects_its_config(override, cls):
    assert isinstance(load_config(None, [override]).method, cls)


def test_hybrid_budget_excludes_explicit_sizes():
    with pytest.raises(ValueError, match="budget derives r"):
        cfgs.HybridMethod(budget=1000, r=4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the guard is for machines without CUDA")
def test_qlora_without_cuda_says_what_it_needs_and_suggests_lora():
    with pytest.raises(ModelError) as error:
        get_method("qlora").quantization_config(cfgs.QLoraMethod())
    message = str(error.value)
    assert "method qlora needs a CUDA GPU" in message
    assert "use method.type=lora" in message
    assert message.count(".") <= 2  # one sentence (plus the dotted method.type)
    with pytest.raises(ModelError, match="needs a CUDA GPU"):
        get_method("qlora").apply(build_tiny_llama(VOCAB), cfgs.QLoraMethod())
