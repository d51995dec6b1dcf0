"""Every method through the real SFT path (the recipe, the trainer, saving, load_for_inference)
on the tiny Llama: a few steps, finite loss, and the reloaded model is the trained one (and
differs from the base)."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from tunesmith.config.load import load_config
from tunesmith.models.load import load_causal_lm
from tunesmith.models.methods import Method
from tunesmith.models.resolve import ResolvedModel
from tunesmith.runs.folder import RunFolder
from tunesmith.runs.trained import load_for_inference
from tunesmith.train.sft import run_sft

METHODS = {
    "loraplus": ["method.type=lora", "method.r=4", "method.loraplus_lr_ratio=16"],
    "ia3": ["method.type=ia3"],
    "prefix": ["method.type=prefix", "method.num_virtual_tokens=4"],
    "prompt": ["method.type=prompt", "method.num_virtual_tokens=4", "method.init_text=hello"],
    "ptuning": ["method.type=ptuning", "method.num_virtual_tokens=4"],
    "adapter": ["method.type=adapter", "method.adapter_size=8"],
    "hybrid": ["method.type=hybrid", "method.r=4", "method.adapter_size=8"],
    "progressive": [
        "method.type=freeze",
        "method.trainable_layers=0",
        "method.trainable_modules=[lm_head]",
        "method.unfreeze_schedule=[{at: 2, layers: 2}]",
    ],
}


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer("What is 3 plus 3? It is 6.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits[:, -ids.shape[1] :]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_saves_and_reloads(name, tmp_path, tiny_model_dir, alpaca_file, monkeypatch):
    trained = {}
    save = Method.save

    def spy(self, model, tokenizer, *args):  # the trained model's logits, as it is saved
        trained["logits"] = _logits(model.eval(), tokenizer)
        save(self, model, tokenizer, *args)

    monkeypatch.setattr(Method, "save", spy)
    config = load_config(
        None,
        [
            f"model.name_or_path={tiny_model_dir}",
            f"data.train={alpaca_file}",
            f"output.dir={tmp_path / 'runs'}",
            f"output.name={name}",
            "train.batch_size=4",
            "train.max_steps=3",
            "train.save_steps=2",  # a checkpoint mid-run: hybrid's adapters are saved with it
            "train.learning_rate=1e-2",
            *METHODS[name],
        ],
    )
    result = run_sft(config, RunFolder.create(config.output, "test"))
    assert math.isfinite(result.summary["train_loss"])
    saved = yaml.safe_load((result.run.root / "config.yaml").read_text())
    assert saved["train"]["packing"] is (name not in ("prefix", "prompt", "ptuning"))
    tuned, tokenizer = load_for_inference(result.run.root)
    base = load_causal_lm(
        ResolvedModel(str(tiny_model_dir), str(tiny_model_dir), "local"), config.model
    )
    reloaded = _logits(tuned, tokenizer)
    assert torch.allclose(reloaded, trained["logits"], atol=1e-6)
    assert not torch.allclose(reloaded, _logits(base.eval(), tokenizer), atol=1e-4)
    if name == "hybrid":
        assert (result.run.checkpoints / "checkpoint-2" / "method_weights.safetensors").is_file()
