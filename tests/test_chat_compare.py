"""`tunesmith chat --compare`: the base model's answer beside the tuned one's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tunesmith.cli import chat as chat_module
from tunesmith.models.generate import generate_replies
from tunesmith.utils.errors import TunesmithError

PROMPT = "hello who are you?"


@pytest.fixture
def run_folder(tmp_path, tiny_model_dir, tiny_tokenizer) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    config = LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config)
    run = tmp_path / "run"
    model.save_pretrained(run / "adapter")
    tiny_tokenizer.save_pretrained(run / "adapter")
    config_yaml = {"model": {"name_or_path": str(tiny_model_dir)}, "method": {"type": "lora"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config_yaml))
    return run


def reply(model, tokenizer) -> str:
    conv = [{"role": "user", "content": PROMPT}]
    return generate_replies(model, tokenizer, [conv], max_new_tokens=10)[0].text


def test_compare_answers_with_base_and_tuned(
    run_folder, tiny_model_dir, tiny_tokenizer, monkeypatch
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    shown = []
    monkeypatch.setattr(chat_module, "show", shown.append)
    chat_module.chat_loop(None, run_folder, PROMPT, None, 10, 0.0, compare=True)

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    expected_base = reply(base, tiny_tokenizer)
    tuned = PeftModel.from_pretrained(base, run_folder / "adapter").eval()
    expected_tuned = reply(tuned, tiny_tokenizer)
    assert shown == [{"base": expected_base, "tuned": expected_tuned}]
    assert expected_base != expected_tuned


def test_compare_needs_an_adapter_and_cli_prints_both_columns(run_folder):
    from typer.testing import CliRunner

    from tunesmith.cli.main import app

    with pytest.raises(TunesmithError, match="--compare needs --adapter"):
        chat_module.chat_loop(None, None, PROMPT, None, 10, 0.0, compare=True)
    args = ["chat", "--adapter", str(run_folder), "--prompt", PROMPT, "--compare"]
    result = CliRunner().invoke(app, [*args, "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "base" in line)
    assert header.index("base") < header.index("tuned")  # side by side on one line
