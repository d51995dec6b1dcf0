"""Shared fixtures: a tiny random Llama with a small byte-level BPE tokenizer, built in-process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# LLaMA-Factory's demo data, beside the project (not shipped with it): tests read it through
# shared_file, which skips them where it is absent
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llamafactory"

_CORPUS = [
    "hello who are you? I am a small assistant built for tests.",
    "What is the capital of France? The capital of France is Paris.",
    "user assistant system: answer briefly and kindly, please.",
    "你好，我是一个测试助手。请问你叫什么名字？",
    "0123456789 + - * / = ( ) [ ] { } , . ! ? : ; ' \"",
]


def shared_file(name: str) -> Path:
    """A file of the shared demo data; the calling test is skipped when it is not there."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"LLaMA-Factory demo data not found at {path}")
    return path


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    return tokenizer


def build_tiny_llama(vocab_size: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train fastest on one thread, above all on a machine shared with others."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_bert_config(**overrides):
    """A 2-layer BERT classifier's config (hidden 32, 4 heads, FFN 64, vocab 100, 3 labels)."""
    from transformers import BertConfig

    fields = dict(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=3,
    )
    return BertConfig(**(fields | overrides))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A local Hugging Face folder (config, safetensors, tokenizer with chat template)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = build_tiny_llama(len(tiny_tokenizer))
    model.generation_config.eos_token_id = tiny_tokenizer.eos_token_id
    model.generation_config.pad_token_id = tiny_tokenizer.pad_token_id
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def alpaca_file(tmp_path) -> Path:
    """Eight alpaca records a tiny model can memorise."""
    from helpers import write_alpaca

    return write_alpaca(tmp_path / "train.jsonl")


# --- the support matrix: tests record the cell they prove (scripts/support_matrix.py) -------

LLAMA = "Llama decoder"
MATRIX_OUT = "TUNESMITH_MATRIX_OUT"  # where the cells of this session go, when set
_cells: list[dict] = []


@pytest.fixture
def matrix_cell(request):
    """matrix_cell(method, capability, value, stage="sft", kind=LLAMA): the cell this test
    proves. Its outcome decides what the matrix shows: value if it passed, FAILED if not."""

    def record(method: str, capability: str, value: str, stage="sft", kind=LLAMA):
        cell = dict(method=method, capability=capability, value=value, stage=stage, kind=kind)
        request.node.user_properties.append(("matrix", cell))

    return record


def pytest_runtest_logreport(report):
    if report.when != "call" and not (report.when == "setup" and report.failed):
        return
    for key, cell in report.user_properties:
        if key == "matrix":
            _cells.append({**cell, "passed": report.passed, "test": report.nodeid})


def pytest_sessionfinish(session):
    out = os.environ.get(MATRIX_OUT)
    if out and _cells:
        Path(out).write_text(json.dumps(_cells, indent=1, ensure_ascii=False), encoding="utf-8")
