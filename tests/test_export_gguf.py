"""GGUF types and architectures: every type the gguf package writes holds exactly the weights
its quantizer makes (read back by transformers' GGUF loader), smaller types make smaller files,
1-D tensors stay float32; Qwen2 and Qwen3 besides Llama; k-quants need llama.cpp's
llama-quantize and say so. llama.cpp itself reads these files in benchmarks/gguf_llamacpp.py."""

from __future__ import annotations

import shutil
import typing
from pathlib import Path

import pytest
import torch

from tunesmith.config.serve import GgufType
from tunesmith.export.gguf import GGUF_TYPES, gguf_name, write_gguf
from tunesmith.utils.errors import ConfigError, ModelError

PROMPTS = ["What is the capital of France?", "hello who are you"]
WRITTEN = ["f32", "f16", "bf16", "q8_0", "q5_0", "q4_0"]


def _save(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _tiny(kind: str, vocab: int):
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

    torch.manual_seed(0)
    shape = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    config = Qwen2Config(**shape) if kind == "qwen2" else Qwen3Config(head_dim=32, **shape)
    return AutoModelForCausalLM.from_config(config)


def _copy(model_dir, tmp_path):
    """GGUF files are written beside the weights: a copy, not the shared test model."""
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


def test_every_written_type_holds_its_quantized_weights(tmp_path, tiny_model_dir, one_thread):
    from gguf import GGMLQuantizationType, GGUFReader

    tiny_model_dir = _copy(tiny_model_dir, tmp_path)
    facts = {f["type"]: f for f in write_gguf(tiny_model_dir, WRITTEN, PROMPTS)}
    assert list(facts) == WRITTEN
    assert all(f["max_abs_diff"] <= 1e-4 for f in facts.values()), facts
    assert facts["f32"]["top1"] == 1.0 and facts["f16"]["relative_rms"] < 0.01
    sizes = [facts[k]["bytes"] for k in ("f32", "f16", "q8_0", "q5_0", "q4_0")]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 5
    tensors = {
        t.name: t.tensor_type for t in GGUFReader(tiny_model_dir / gguf_name("q4_0")).tensors
    }
    assert tensors["blk.0.attn_q.weight"] == GGMLQuantizationType.Q4_0
    assert tensors["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32  # 1-D stays float32
    assert tensors["output.weight"] == GGMLQuantizationType.Q8_0  # low-bit: output at q8_0


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_qwen_models_export_exactly(arch, tmp_path, tiny_tokenizer, one_thread):
    from gguf import GGUFReader

    folder = _save(_tiny(arch, len(tiny_tokenizer)), tiny_tokenizer, tmp_path / arch)
    facts = write_gguf(folder, ["f32", "q8_0"], PROMPTS)
    assert [f["max_abs_diff"] <= 1e-4 for f in facts] == [True, True], facts
    reader = GGUFReader(folder / gguf_name("f32"))
    assert reader.fields["general.architecture"].contents() == arch
    assert reader.fields["tokenizer.ggml.pre"].contents() == "qwen2"
    names = {t.name for t in reader.tensors}
    assert ("blk.0.attn_q.bias" in names) == (arch == "qwen2")  # Qwen2 has q/k/v biases
    assert ("blk.0.attn_q_norm.weight" in names) == (arch == "qwen3")


def test_k_quants_need_llama_quantize(tiny_model_dir, monkeypatch, tmp_path):
    tiny_model_dir = _copy(tiny_model_dir, tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-quantize anywhere
    monkeypatch.delenv("TUNESMITH_LLAMA_CPP", raising=False)
    with pytest.raises(ConfigError, match=r"made by llama\.cpp's llama-quantize, which was not"):
        write_gguf(tiny_model_dir, ["q4_k_m"], PROMPTS)
    with pytest.raises(ConfigError, match=r"export\.llama_cpp: no llama-quantize at"):
        write_gguf(tiny_model_dir, ["q4_k_m"], PROMPTS, llama_cpp=str(tmp_path))
    assert set(typing.get_args(GgufType)) == set(GGUF_TYPES)  # the config offers what we write


def test_other_architectures_are_one_sentence(tmp_path, tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tiny_tokenizer), n_embd=32, n_layer=1, n_head=2)
    )
    folder = _save(model, tiny_tokenizer, tmp_path / "gpt2")
    with pytest.raises(ModelError, match="supports llama, mistral, qwen2, qwen3 models; this one"):
        write_gguf(folder, ["f16"], PROMPTS)
