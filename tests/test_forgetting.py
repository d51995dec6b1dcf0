"""Forgetting control: replay mixing, L2 towards the pretrained weights, layer-wise lr decay."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from helpers import train_run, train_tiny
from safetensors.torch import load_file

from tunesmith.config.load import load_config
from tunesmith.config.schema import DataConfig
from tunesmith.data.dataset import build_sft_data
from tunesmith.runs.folder import read_jsonl
from tunesmith.train.forgetting import (
    L2ToPretrained,
    add_replay,
    layerwise_param_groups,
    replay_count,
    replay_sources,
    sample_replay,
)
from tunesmith.train.trainer import CausalLMTrainer
from tunesmith.utils.errors import ConfigError


@pytest.fixture
def general_file(tmp_path):
    """Twenty general records the task data does not contain, and one without an answer."""
    path = tmp_path / "general.jsonl"
    records = [
        {"instruction": f"Name colour {i}.", "input": "", "output": f"Colour {i} is blue."}
        for i in range(20)
    ]
    records.append({"instruction": "Name no colour.", "input": "", "output": ""})
    lines = [json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _decoded(examples, tokenizer) -> list[str]:
    return [tokenizer.decode(e["input_ids"]) for e in examples]


# --- replay ------------------------------------------------------------------------------------


def test_replay_count_is_the_share_of_the_final_set():
    assert replay_count(8, 0.2) == 2  # 2 of 10
    assert replay_count(10, 0.5) == 10
    assert replay_count(3, 0.1) == 0  # a third of an example rounds to none


def test_replay_sampling_repeats_only_when_the_pool_is_short():
    pool = list(range(5))
    picked, repeated = sample_replay(pool, 4, seed=1)
    assert len(set(picked)) == 4 and not repeated
    assert sorted(sample_replay(pool, 5, seed=1)[0]) == pool and not sample_replay(pool, 5, 1)[1]
    picked, repeated = sample_replay(pool, 12, seed=1)
    assert repeated and len(picked) == 12
    assert sorted(picked.count(x) for x in pool) == [2, 2, 2, 3, 3]  # as even as possible


def test_replay_mix_is_exact_and_seeded(tiny_tokenizer, alpaca_file, general_file):
    cfg = DataConfig(
        train=[str(alpaca_file)],
        on_error="skip",
        replay={"files": [str(general_file)], "ratio": 0.2},
    )
    rejects = []
    task = build_sft_data(cfg.train, cfg, tiny_tokenizer)
    sources = replay_sources(cfg)

    def mix(seed):
        sink = lambda *reject: rejects.append(reject)  # noqa: E731
        return add_replay(task, sources, cfg, seed, tiny_tokenizer, sink)

    first, again, other = mix(7), mix(7), mix(8)
    assert first.stats["sources"] == {"task": 8, "replay": 2}
    assert first.stats["examples"] == len(first.examples) == 10
    replay = first.stats["replay"]
    assert (replay["examples"], replay["available"], replay["with_replacement"]) == (2, 20, False)
    assert first.examples[:8] == task.examples
    added = _decoded(first.examples[8:], tiny_tokenizer)
    assert all("is blue" in text for text in added)
    assert first.examples == again.examples
    assert first.examples != other.examples
    # the unanswered replay record was rejected like training data, once per read
    assert replay["rejected"] == 1 and first.stats["rejected"] == task.stats["rejected"] + 1
    assert [r[0] for r in rejects] == [str(general_file)] * 3


def test_replay_records_are_trained_on(tmp_path, tiny_model_dir, alpaca_file, general_file):
    seen: list[torch.Tensor] = []
    original = CausalLMTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        seen.append(inputs["input_ids"].clone())
        return original(self, model, inputs, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CausalLMTrainer, "compute_loss", spy)
        result = train_tiny(
            tmp_path,
            tiny_model_dir,
            alpaca_file,
            "replay",
            f"data.replay.files=[{general_file}]",
            "data.replay.ratio=0.2",
            "data.on_error=skip",
            "train.epochs=1",
            "train.batch_size=5",
        )
    summary = json.loads((result.run.root / "summary.json").read_text())
    assert summary["data"]["sources"] == {"task": 8, "replay": 2}
    rejected = read_jsonl(result.run.rejects_path)
    assert [r["source"] for r in rejected] == [str(general_file)]
    tokenizer = _tokenizer(tiny_model_dir)
    trained = "".join(tokenizer.decode(row) for batch in seen for row in batch)
    assert trained.count("is blue") == 2  # one epoch: each replay example once
    assert trained.count("plus") == 8


def _tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def test_replay_from_the_registry(tmp_path, general_file):
    registry = tmp_path / "registry.yaml"
    registry.write_text(f"general:\n  file: {general_file.name}\n  format: alpaca\n")
    cfg = DataConfig(registry=str(registry), replay={"dataset": "general"})
    [source] = replay_sources(cfg)
    assert (source.paths, source.fmt) == ([str(general_file)], "alpaca")
    cfg = DataConfig(registry=str(registry), replay={"dataset": "genral"})
    with pytest.raises(ConfigError, match=r"data\.replay\.dataset.*general"):
        replay_sources(cfg)


# --- L2 towards the pretrained weights ---------------------------------------------------------


def _trainer(model, **kwargs) -> CausalLMTrainer:
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir="/tmp/unused", use_cpu=True, report_to=[], learning_rate=1e-3, weight_decay=0.1
    )
    return CausalLMTrainer(model=model, args=args, **kwargs)


def _tiny_model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir)


def test_l2_penalty_is_added_to_the_training_loss_only(tiny_model_dir):
    model = _tiny_model(tiny_model_dir)
    plain, penalised = _trainer(model), _trainer(model, l2_to_pretrained=0.5)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.add_(0.01)  # moved away from the anchor
        model.lm_head.weight[:3].sub_(0.02)
    expected = 0.5 * (0.01**2 * 64 * 32 + 0.02**2 * 3 * 32)
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 8, 9]]),
        "labels": torch.tensor([[5, 6, 7, 8, 9]]),
    }
    model.train()
    with torch.no_grad():
        difference = penalised.compute_loss(model, batch) - plain.compute_loss(model, batch)
        assert difference.item() == pytest.approx(expected, rel=1e-4)
        model.eval()  # evaluation losses stay the task's alone
        assert torch.equal(penalised.compute_loss(model, batch), plain.compute_loss(model, batch))
    assert penalised.l2.mean_since_last_log() == pytest.approx(expected, rel=1e-4)
    assert penalised.l2.mean_since_last_log() is None  # reset at each log


def test_l2_on_lora_is_the_merged_update(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        _tiny_model(tiny_model_dir), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
    )
    hook = L2ToPretrained(model, weight=2.0)
    assert hook.anchors == []  # nothing copied: the pretrained update is zero
    assert hook().item() == 0.0  # B starts at zero
    torch.manual_seed(0)
    layers = [m for m in model.modules() if hasattr(m, "get_delta_weight")]
    with torch.no_grad():
        for layer in layers:
            layer.lora_B["default"].weight.normal_(std=0.1)
        merged = sum(layer.get_delta_weight("default").pow(2).sum() for layer in layers)
    assert len(layers) == 14  # 7 linear layers x 2 blocks
    assert hook().item() == pytest.approx(2.0 * merged.item(), rel=1e-4)


def _distance(model_dir, artifact, prefix="") -> float:
    before, after = load_file(model_dir / "model.safetensors"), load_file(artifact)
    return math.sqrt(
        sum((after[n] - before[n]).pow(2).sum().item() for n in before if n.startswith(prefix))
    )


def test_l2_keeps_the_trained_weights_near_the_pretrained(tmp_path, tiny_model_dir, alpaca_file):
    common = ("method.type=full", "train.learning_rate=1e-2", "train.max_steps=10")
    free = train_tiny(tmp_path, tiny_model_dir, alpaca_file, "l2-off", *common)
    held = train_tiny(
        tmp_path, tiny_model_dir, alpaca_file, "l2-on", *common, "train.l2_to_pretrained=10"
    )
    moved = _distance(tiny_model_dir, free.artifact / "model.safetensors")
    kept = _distance(tiny_model_dir, held.artifact / "model.safetensors")
    assert kept < 0.2 * moved, (kept, moved)
    metrics = read_jsonl(held.run.metrics_path)
    penalties = [m["l2_penalty"] for m in metrics]
    assert penalties[0] == 0.0  # the first step starts at the pretrained weights
    assert all(p > 0 for p in penalties[1:])
    # the logged loss includes the penalty (step 2's penalty alone exceeds the task loss)
    assert all(m["loss"] > m["l2_penalty"] for m in metrics)
    assert max(penalties) > metrics[0]["loss"]
    assert all("l2_penalty" not in m for m in read_jsonl(free.run.metrics_path))


def test_l2_anchor_survives_a_resume(tmp_path, tiny_model_dir, alpaca_file):
    common = (
        "method.type=full",
        "train.learning_rate=1e-2",
        "train.max_steps=6",
        "train.save_steps=3",
        "train.l2_to_pretrained=10",
    )
    reference = train_tiny(tmp_path, tiny_model_dir, alpaca_file, "l2-ref", *common)
    cut = train_tiny(tmp_path, tiny_model_dir, alpaca_file, "l2-cut", *common)
    # as if killed after checkpoint-3
    shutil.rmtree(cut.run.checkpoints / "checkpoint-6")
    (cut.run.root / "summary.json").unlink()
    config = load_config(cut.run.config_path)
    resumed = train_run(config, resume=True)
    assert resumed.summary["resumed_from"].endswith("checkpoint-3")

    def tail(run):
        return [(m["step"], m["loss"], m["l2_penalty"]) for m in read_jsonl(run.metrics_path)][3:]

    assert tail(resumed.run) == tail(reference.run)  # anchored to the base, not to checkpoint-3
    assert all(penalty > 0 for _, _, penalty in tail(reference.run))


# --- layer-wise learning-rate decay ------------------------------------------------------------


def _lr_and_decay(trainer) -> dict[str, tuple[float, float]]:
    groups = {id(p): g for g in trainer.create_optimizer().param_groups for p in g["params"]}
    return {
        name: (groups[id(p)]["lr"], groups[id(p)]["weight_decay"])
        for name, p in trainer.model.named_parameters()
        if p.requires_grad
    }


def test_layerwise_lr_decay_groups_by_layer(tiny_model_dir):
    trainer = _trainer(_tiny_model(tiny_model_dir), layerwise_lr_decay=0.5)
    got = _lr_and_decay(trainer)
    # 2 decoder layers: the top one (1) at lr, layer 0 at lr x 0.5, embeddings at lr x 0.25
    assert got["model.embed_tokens.weight"] == (pytest.approx(2.5e-4), 0.1)
    assert got["model.layers.0.self_attn.q_proj.weight"] == (pytest.approx(5e-4), 0.1)
    assert got["model.layers.0.input_layernorm.weight"] == (pytest.approx(5e-4), 0.0)
    assert got["model.layers.1.mlp.down_proj.weight"] == (pytest.approx(1e-3), 0.1)
    assert got["model.layers.1.post_attention_layernorm.weight"] == (pytest.approx(1e-3), 0.0)
    assert got["model.norm.weight"] == (pytest.approx(1e-3), 0.0)
    assert got["lm_head.weight"] == (pytest.approx(1e-3), 0.1)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # the logged lr
    assert len(got) == sum(len(g["params"]) for g in trainer.optimizer.param_groups)


def test_layerwise_lr_decay_applies_to_lora_and_is_off_at_one(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(_tiny_model(tiny_model_dir), LoraConfig(r=4, target_modules=["q_proj"]))
    got = _lr_and_decay(_trainer(lora, layerwise_lr_decay=0.5))
    lower = [lr for name, (lr, _) in got.items() if ".layers.0." in name]
    upper = [lr for name, (lr, _) in got.items() if ".layers.1." in name]
    assert len(lower) == len(upper) == 2  # lora_A and lora_B of q_proj
    assert lower == pytest.approx([5e-4] * 2) and upper == pytest.approx([1e-3] * 2)
    assert all(lr == 1e-3 for lr, _ in _lr_and_decay(_trainer(lora)).values())


def test_layerwise_lr_decay_needs_layers():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"train\.layerwise_lr_decay"):
        layerwise_param_groups(model, 1e-3, 0.5, 0.0, set())


def test_layerwise_lr_decay_holds_the_embeddings(tmp_path, tiny_model_dir, alpaca_file):
    common = ("method.type=full", "train.learning_rate=1e-2", "train.max_steps=5")
    flat = train_tiny(tmp_path, tiny_model_dir, alpaca_file, "llrd-off", *common)
    decayed = train_tiny(
        tmp_path, tiny_model_dir, alpaca_file, "llrd-on", *common, "train.layerwise_lr_decay=0.1"
    )
    flat_path, decayed_path = (r.artifact / "model.safetensors" for r in (flat, decayed))
    embeddings = "model.embed_tokens."
    # Adam's steps scale with the lr: the embeddings (lr x 0.01) barely move
    assert _distance(tiny_model_dir, decayed_path, embeddings) < 0.05 * _distance(
        tiny_model_dir, flat_path, embeddings
    )
    top = "model.layers.1."
    assert _distance(tiny_model_dir, decayed_path, top) > 0.5 * _distance(
        tiny_model_dir, flat_path, top
    )


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.replay.ratio=1.0", "data.replay.ratio"),
        ("data.replay.ratio=0", "data.replay.ratio"),
        ("data.replay.format=text", "data.replay.format"),
        ("data.replay.columns={}", "data.replay"),  # no files, no dataset
        ("train.l2_to_pretrained=-1", "train.l2_to_pretrained"),
        ("train.l2_to_pretrained=nan", "train.l2_to_pretrained"),
        ("train.layerwise_lr_decay=0", "train.layerwise_lr_decay"),
        ("train.layerwise_lr_decay=1.2", "train.layerwise_lr_decay"),
    ],
)
def test_invalid_values_name_the_key(override, key):
    extra = [] if "columns" in override or "train." in override else ["data.replay.files=a.jsonl"]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ":"):
        load_config(None, [override, *extra])
