"""Export: merged LoRA equals its adapter model, verification catches a bad merge, card facts."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
import yaml

from tunesmith.config.schema import RunConfig
from tunesmith.data.quality.version import file_hash
from tunesmith.data.render import prompt_ids
from tunesmith.export import run as export_module
from tunesmith.export.run import export_run
from tunesmith.utils.errors import ConfigError, ModelError

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def make_run(root: Path, model_dir: Path, tokenizer, peft_config, seed: int = 1) -> Path:
    """A run folder as `tunesmith train` leaves it, with random (non-zero) adapter weights."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), peft_config)
    run = root / f"run-{seed}"
    data = root / "train.jsonl"
    data.write_text('{"instruction": "hi", "output": "hello"}\n', encoding="utf-8")
    method = {"type": "lora", "r": 4} if peft_config.peft_type == "LORA" else {"type": "prefix"}
    config = {
        "model": {"name_or_path": str(model_dir)},
        "method": method,
        "data": {"train": [str(data)]},
    }
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    model.save_pretrained(run / "adapter")
    tokenizer.save_pretrained(run / "adapter")
    return run


def lora_config():
    from peft import LoraConfig

    # init_lora_weights=False: B is random, so the adapter really changes the model
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)


def logits(model, tokenizer) -> torch.Tensor:
    ids = torch.tensor([prompt_ids(tokenizer, PROMPT)])
    with torch.inference_mode():
        return model(input_ids=ids).logits[0]


def adapter_model(model_dir: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter)


def test_merged_lora_equals_adapter_model(tmp_path, tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = make_run(tmp_path, tiny_model_dir, tiny_tokenizer, lora_config())
    config = RunConfig.model_validate({"export": {"max_shard_size": "40KB"}})
    result = export_run(config, run)

    out = run / "export"
    assert result.folder == out and result.layout == "merged"
    assert not (out / "adapter_config.json").exists()  # a plain model, not the adapter again
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded at 40KB
    merged = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    expected = logits(adapter_model(tiny_model_dir, run / "adapter"), tiny_tokenizer)
    base = logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_tokenizer)
    got = logits(merged, tokenizer)
    assert torch.allclose(got, expected, atol=1e-4)
    assert (expected - base).abs().max() > 1e-2  # the merge did not export the base
    assert tokenizer.chat_template == tiny_tokenizer.chat_template
    eos = merged.generation_config.eos_token_id
    assert (eos if isinstance(eos, list) else [eos])[0] == tiny_tokenizer.eos_token_id
    assert merged.generation_config.pad_token_id == tiny_tokenizer.pad_token_id
    v = result.verification
    assert v.passed and v.max_abs_diff < 1e-4 and v.adapter_effect > 1e-2


def test_unmerged_export_fails_verification(tmp_path, tiny_model_dir, tiny_tokenizer, monkeypatch):
    # the failure users report: a "merged" export that is really the base model
    run = make_run(tmp_path, tiny_model_dir, tiny_tokenizer, lora_config())
    # unload() removes the LoRA layers without merging them
    monkeypatch.setattr(export_module, "merge", lambda trained: trained.model.unload())
    with pytest.raises(ModelError, match=r"verification failed: .*logits differ"):
        export_run(RunConfig(), run)
    assert not (run / "export").exists()
    assert not list(run.glob(".export*"))  # no staging folder left behind


def test_non_mergeable_method_exports_base_and_adapter(tmp_path, tiny_model_dir, tiny_tokenizer):
    from peft import PrefixTuningConfig, TaskType

    prefix = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)
    run = make_run(tmp_path, tiny_model_dir, tiny_tokenizer, prefix)
    result = export_run(RunConfig(), run)

    out = run / "export"
    assert result.layout == "base+adapter"
    assert "cannot be merged" in result.statement
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "base" / "model.safetensors").is_file()
    assert not list(out.rglob("*.bin"))
    expected = logits(adapter_model(tiny_model_dir, run / "adapter"), tiny_tokenizer)
    got = logits(adapter_model(out / "base", out / "adapter"), tiny_tokenizer)
    assert torch.allclose(got, expected, atol=1e-5)
    assert result.verification.passed
    assert "cannot be merged" in (out / "README.md").read_text()
    # safetensors writes 0600 files; the export's files all get the umask's usual mode
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.relative_to(out): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert modes[Path("base/model.safetensors")] == modes[Path("README.md")] == 0o666 & ~umask
    assert modes[Path("adapter/adapter_model.safetensors")] == 0o666 & ~umask
    assert {m for p, m in modes.items() if (out / p).is_file()} == {0o666 & ~umask}


def test_model_card_states_base_method_data_and_eval(tmp_path, tiny_model_dir, tiny_tokenizer):
    run = make_run(tmp_path, tiny_model_dir, tiny_tokenizer, lora_config())
    (run / "eval.json").write_text(json.dumps({"rougeL": {"base": 0.125, "tuned": 0.5}}))
    (run / "summary.json").write_text(json.dumps({"train_loss": 1.75, "steps": 12}))
    export_run(RunConfig(), run)

    card = (run / "export" / "README.md").read_text()
    facts = json.loads((run / "export" / "export.json").read_text())
    data_file = str(tmp_path / "train.jsonl")
    assert f"base_model: {tiny_model_dir}" in card
    assert (facts["method"]["type"], facts["method"]["r"]) == ("lora", 4)  # the whole section
    assert facts["data"] == {data_file: file_hash(data_file)}
    assert file_hash(data_file) in card
    assert facts["eval"]["rougeL"]["tuned"] == 0.5 and '"tuned": 0.5' in card
    assert facts["training"] == {"train_loss": 1.75, "steps": 12}
    assert facts["verification"]["passed"] is True


def test_export_refuses_to_overwrite_and_cli_runs(tmp_path, tiny_model_dir, tiny_tokenizer):
    from typer.testing import CliRunner

    from tunesmith.cli.main import app

    run = make_run(tmp_path, tiny_model_dir, tiny_tokenizer, lora_config())
    result = CliRunner().invoke(app, ["export", str(run), "export.dtype=bfloat16"])
    assert result.exit_code == 0, result.output
    assert "verified" in result.output
    saved = json.loads((run / "export" / "config.json").read_text())
    assert saved["dtype"] == "bfloat16"
    with pytest.raises(ConfigError, match="already exists"):
        export_run(RunConfig(), run)
    again = CliRunner().invoke(app, ["export", str(run)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_gguf_export_loads_back_with_equal_logits(tmp_path, tiny_model_dir, tiny_tokenizer):
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = make_run(tmp_path, tiny_model_dir, tiny_tokenizer, lora_config())
    export_run(RunConfig.model_validate({"export": {"gguf": True, "gguf_types": ["f32"]}}), run)

    out = run / "export"
    merged = AutoModelForCausalLM.from_pretrained(out)
    loaded = AutoModelForCausalLM.from_pretrained(
        out, gguf_file="model-F32.gguf", dtype=torch.float32
    )
    gguf_tok = AutoTokenizer.from_pretrained(out, gguf_file="model-F32.gguf")
    ids = torch.tensor([prompt_ids(tiny_tokenizer, PROMPT)])
    assert gguf_tok.decode(ids[0]) == tiny_tokenizer.decode(ids[0])
    with torch.inference_mode():
        assert torch.allclose(loaded(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4)
    # transformers' GGUF loader drops the template; llama.cpp reads it from the metadata
    field = GGUFReader(out / "model-F32.gguf").fields["tokenizer.chat_template"]
    assert field.contents() == tiny_tokenizer.chat_template
    (facts,) = json.loads((out / "export.json").read_text())["gguf"]
    assert facts["file"] == "model-F32.gguf" and facts["max_abs_diff"] < 1e-4
    assert facts["top1"] == 1.0 and facts["relative_rms"] < 1e-5
    assert "model-F32.gguf" in (out / "README.md").read_text()
