"""SFT on the tiny in-process Llama: learning, methods, saving and reloading, reproducibility."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import train_tiny
from safetensors.torch import load_file

from tunesmith.config.load import load_config
from tunesmith.runs.trained import load_for_inference


def _losses(result) -> list[float]:
    lines = result.run.metrics_path.read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_loss_falls_when_overfitting(tmp_path, tiny_model_dir, alpaca_file):
    result = train_tiny(
        tmp_path,
        tiny_model_dir,
        alpaca_file,
        "overfit",
        "method.type=full",
        "train.learning_rate=1e-2",
        "train.max_steps=30",
    )
    losses = _losses(result)
    assert len(losses) == 30
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    assert (result.run.plots / "loss.png").stat().st_size > 1000
    assert (result.run.model_dir / "model.safetensors").is_file()


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer("What is 3 plus 3? It is 6.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_lora_adapter_reloads_with_identical_logits(tmp_path, tiny_model_dir, alpaca_file):
    result = train_tiny(
        tmp_path,
        tiny_model_dir,
        alpaca_file,
        "lora",
        "method.r=4",
        "method.dropout=0.0",
        "train.learning_rate=1e-2",
        "train.max_steps=6",
    )
    assert (result.artifact / "adapter_config.json").is_file()
    assert (result.artifact / "chat_template.jinja").is_file()
    tuned, tokenizer = load_for_inference(result.run.root)
    base, _ = load_for_inference(
        model_cfg=load_config(None, [f"model.name_or_path={tiny_model_dir}"]).model
    )
    reloaded = _logits(tuned, tokenizer)
    again, _ = load_for_inference(result.artifact.parent)
    assert torch.allclose(reloaded, _logits(again, tokenizer), atol=0, rtol=0)
    # The adapter changed the model, and the reload is the trained model, not the base.
    assert not torch.allclose(reloaded, _logits(base, tokenizer), atol=1e-4)
    summary = json.loads((result.run.root / "summary.json").read_text())
    assert 0 < summary["trainable_parameters"] < summary["total_parameters"]


def test_lora_in_memory_equals_reloaded(tmp_path, tiny_model_dir, alpaca_file, monkeypatch):
    from tunesmith.models.methods import get_method

    captured = {}
    original_save = get_method("lora").save

    def spy(model, tokenizer, out_dir, *args):
        captured["logits"] = _logits(model.eval(), tokenizer)
        original_save(model, tokenizer, out_dir, *args)

    monkeypatch.setattr(get_method("lora"), "save", spy)
    result = train_tiny(
        tmp_path,
        tiny_model_dir,
        alpaca_file,
        "lora-mem",
        "method.r=4",
        "train.max_steps=4",
        "train.learning_rate=1e-2",
    )
    tuned, tokenizer = load_for_inference(result.run.root)
    assert torch.allclose(captured["logits"], _logits(tuned, tokenizer), atol=1e-6)


def test_freeze_trains_only_the_last_layers(tmp_path, tiny_model_dir, alpaca_file):
    result = train_tiny(
        tmp_path,
        tiny_model_dir,
        alpaca_file,
        "freeze",
        "method.type=freeze",
        "method.trainable_layers=1",
        "method.trainable_modules=[norm]",
        "train.learning_rate=1e-2",
        "train.max_steps=3",
    )
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(result.artifact / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed, "nothing was trained"
    assert all(name.startswith(("model.layers.1.", "model.norm.")) for name in changed), changed
    assert any(name.startswith("model.layers.1.") for name in changed)
    assert "model.norm.weight" in changed


def test_same_seed_same_losses(tmp_path, tiny_model_dir, alpaca_file):
    common = ("method.r=4", "train.max_steps=4", "train.learning_rate=1e-2", "train.seed=7")
    first = _losses(train_tiny(tmp_path, tiny_model_dir, alpaca_file, "seed-a", *common))
    second = _losses(train_tiny(tmp_path, tiny_model_dir, alpaca_file, "seed-b", *common))
    other = _losses(
        train_tiny(tmp_path, tiny_model_dir, alpaca_file, "seed-c", *common[:3], "train.seed=8")
    )
    assert first == second
    assert first != other


def test_freeze_rejects_more_layers_than_the_model_has(tmp_path, tiny_model_dir, alpaca_file):
    from tunesmith.utils.errors import ConfigError

    with pytest.raises(ConfigError, match="the model has 2 layers"):
        train_tiny(
            tmp_path,
            tiny_model_dir,
            alpaca_file,
            "bad",
            "method.type=freeze",
            "method.trainable_layers=5",
        )


def test_eval_data_is_evaluated_and_logged(tmp_path, tiny_model_dir, alpaca_file):
    result = train_tiny(
        tmp_path,
        tiny_model_dir,
        alpaca_file,
        "with-eval",
        f"data.eval={alpaca_file}",
        "train.max_steps=4",
        "train.save_steps=2",
        "train.learning_rate=1e-2",
    )
    metrics = [json.loads(x) for x in result.run.metrics_path.read_text().splitlines()]
    evals = [m for m in metrics if "eval_loss" in m]
    assert [m["step"] for m in evals] == [2, 4]
    assert evals[1]["eval_loss"] < evals[0]["eval_loss"]  # eval set == train set: it must fall
    assert result.summary["eval_data"]["examples"] == 8


def _batch_loss(trainer_model, batch):
    from transformers import TrainingArguments

    from tunesmith.train.trainer import CausalLMTrainer

    args = TrainingArguments(output_dir="/tmp/unused", use_cpu=True, report_to=[])
    trainer = CausalLMTrainer(model=trainer_model, args=args)
    with torch.no_grad():
        return trainer.compute_loss(trainer_model, batch).item()


def test_packed_and_trained_only_logits_give_the_reference_loss(tiny_model_dir, alpaca_file):
    """Padded, packed and the model's own full-logits loss agree on the same examples."""
    from transformers import AutoModelForCausalLM

    from tunesmith.config.schema import DataConfig
    from tunesmith.data.dataset import PackedCollator, SFTCollator, build_sft_data
    from tunesmith.models.load import load_tokenizer
    from tunesmith.models.resolve import resolve_model

    cfg = DataConfig(train=[str(alpaca_file)])
    tokenizer = load_tokenizer(resolve_model(str(tiny_model_dir)), load_config(None, []).model)
    examples = build_sft_data(cfg.train, cfg, tokenizer).examples[:4]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    padded = SFTCollator(tokenizer.pad_token_id)(examples)
    packed = PackedCollator()(examples)
    with torch.no_grad():
        # full-vocabulary logits at every position
        reference = model(**padded, use_cache=False).loss.item()
    assert _batch_loss(model, padded) == pytest.approx(reference, rel=1e-6)
    assert _batch_loss(model, packed) == pytest.approx(reference, rel=1e-6)
    assert packed["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in examples))


def test_packed_examples_do_not_attend_to_each_other(tiny_model_dir, alpaca_file):
    from transformers import AutoModelForCausalLM

    from tunesmith.data.dataset import PackedCollator

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    first = {"input_ids": [5, 6, 7, 8], "labels": [5, 6, 7, 8]}
    second = {"input_ids": [9, 10, 11], "labels": [9, 10, 11]}
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([second["input_ids"]]), use_cache=False).logits
        batch = {k: v for k, v in PackedCollator()([first, second]).items() if k != "labels"}
        packed = model(**batch, use_cache=False).logits
        unpacked = model(input_ids=batch["input_ids"], use_cache=False).logits
    assert torch.allclose(packed[:, 4:], alone, atol=1e-5)
    assert not torch.allclose(unpacked[:, 4:], alone, atol=1e-5)  # the check can fail


def _batch_spreads(tmp_path, model_dir, data, sampling: str) -> int:
    """Sum over batches of (longest - shortest example), read from the packed position ids."""
    import tunesmith.train.trainer as trainer_module

    spreads = []
    original = trainer_module.CausalLMTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        starts = (inputs["position_ids"][0] == 0).nonzero().flatten().tolist()
        ends = [*starts[1:], inputs["position_ids"].shape[1]]
        lengths = [end - start for start, end in zip(starts, ends, strict=True)]
        spreads.append(max(lengths) - min(lengths))
        return original(self, model, inputs, *args, **kwargs)

    trainer_module.CausalLMTrainer.compute_loss = spy
    try:
        train_tiny(
            tmp_path,
            model_dir,
            data,
            sampling,
            f"train.sampling={sampling}",
            "train.epochs=1",
            "train.batch_size=2",
            "method.r=2",
        )
    finally:
        trainer_module.CausalLMTrainer.compute_loss = original
    return sum(spreads)


def test_group_by_length_batches_similar_lengths(tmp_path, tiny_model_dir):
    data = tmp_path / "mixed.jsonl"
    rows = [{"instruction": "q" * (5 + 3 * i), "output": "a" * (5 + 3 * i)} for i in range(32)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    grouped = _batch_spreads(tmp_path, tiny_model_dir, data, "group_by_length")
    shuffled = _batch_spreads(tmp_path, tiny_model_dir, data, "random")
    assert grouped * 2 < shuffled  # seeded: 360 vs 888 token spread when written


def test_merged_lora_gives_the_adapter_logits(tmp_path, tiny_model_dir, alpaca_file):
    from tunesmith.models.methods import get_method

    result = train_tiny(
        tmp_path,
        tiny_model_dir,
        alpaca_file,
        "merge",
        "method.r=4",
        "method.dropout=0.0",
        "train.max_steps=4",
        "train.learning_rate=1e-2",
    )
    tuned, tokenizer = load_for_inference(result.run.root)
    adapter_logits = _logits(tuned, tokenizer)
    merged = get_method("lora").merge(tuned)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert torch.allclose(_logits(merged, tokenizer), adapter_logits, atol=1e-5)
