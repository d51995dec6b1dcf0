"""Perplexity by hand on a tiny model, and the forgetting check around a training run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_llama, shared_file
from helpers import train_tiny

from tunesmith.config.load import load_config
from tunesmith.models.perplexity import perplexity
from tunesmith.runs.folder import read_jsonl
from tunesmith.runs.trained import load_for_inference
from tunesmith.utils.errors import ConfigError, DataError

TEXTS = [
    "What is the capital of France? The capital of France is Paris.",
    "hello who are you?",
    "你好，我是一个测试助手。",
]


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    model = build_tiny_llama(len(tiny_tokenizer), seed=1)
    with torch.no_grad():  # sharper logits: texts get clearly different losses
        model.lm_head.weight.mul_(30)
    return model.train()  # dropout-free, but train mode: perplexity must switch and restore


def _hand_loss(model, tokenizer, text: str, max_length: int = 10_000) -> tuple[float, int]:
    """(HF's mean loss, predicted tokens) of one text, the reference for perplexity."""
    ids = torch.tensor([tokenizer(text)["input_ids"][:max_length]])
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item(), ids.shape[1] - 1


def test_one_text_is_exp_of_the_model_loss(model, tiny_tokenizer):
    loss, n = _hand_loss(model, tiny_tokenizer, TEXTS[0])
    result = perplexity(model, tiny_tokenizer, TEXTS[:1])
    assert result.perplexity == pytest.approx(math.exp(loss), rel=1e-5)
    assert result.tokens == n and result.documents == 1 and result.truncated == 0


def test_batched_padded_texts_weigh_by_tokens(model, tiny_tokenizer):
    parts = [_hand_loss(model, tiny_tokenizer, t) for t in TEXTS]
    mean = sum(loss * n for loss, n in parts) / sum(n for _, n in parts)
    for batch_size in (1, 2, 3):  # padding must not change the result
        result = perplexity(model, tiny_tokenizer, TEXTS, batch_size=batch_size)
        assert result.perplexity == pytest.approx(math.exp(mean), rel=1e-5)
        assert result.tokens == sum(n for _, n in parts)
    # the texts differ enough that an unweighted mean of their losses is another number
    assert math.exp(mean) != pytest.approx(math.exp(sum(x for x, _ in parts) / 3), rel=1e-2)


def test_texts_are_cut_to_max_length(model, tiny_tokenizer):
    loss, n = _hand_loss(model, tiny_tokenizer, TEXTS[0], max_length=6)
    result = perplexity(model, tiny_tokenizer, TEXTS[:2], max_length=6)
    short_loss, short_n = _hand_loss(model, tiny_tokenizer, TEXTS[1])
    assert short_n + 1 <= 6  # the second text is not cut
    expected = math.exp((loss * n + short_loss * short_n) / (n + short_n))
    assert result.perplexity == pytest.approx(expected, rel=1e-5) and result.truncated == 1


def test_no_gradients_and_the_mode_is_restored(model, tiny_tokenizer):
    perplexity(model, tiny_tokenizer, TEXTS)
    assert model.training and all(p.grad is None for p in model.parameters())
    with pytest.raises(DataError, match="nothing to score"):
        perplexity(model, tiny_tokenizer, ["a"], max_length=1)


# --- the forgetting check in a run --------------------------------------------------------


@pytest.fixture
def general_text(tmp_path) -> Path:
    path = tmp_path / "general.txt"
    path.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    return path


def _ppl(model, tokenizer, path: Path) -> float:
    texts = path.read_text(encoding="utf-8").splitlines()
    return perplexity(model, tokenizer, texts, max_length=512).perplexity


def test_forgetting_reports_base_and_tuned_perplexity(
    tmp_path, tiny_model_dir, alpaca_file, general_text, capsys
):
    result = train_tiny(
        tmp_path,
        tiny_model_dir,
        alpaca_file,
        "full",
        "method.type=full",
        "train.learning_rate=1e-2",
        "train.max_steps=15",
        f"train.forgetting_eval.data={general_text}",
    )
    found = json.loads((result.run.root / "summary.json").read_text())["forgetting"]
    base, tokenizer = load_for_inference(
        model_cfg=load_config(None, [f"model.name_or_path={tiny_model_dir}"]).model
    )
    tuned, _ = load_for_inference(result.run.root)
    assert found["base_perplexity"] == pytest.approx(_ppl(base, tokenizer, general_text), rel=1e-5)
    assert found["tuned_perplexity"] == pytest.approx(
        _ppl(tuned, tokenizer, general_text), rel=1e-4
    )
    change = (found["tuned_perplexity"] - found["base_perplexity"]) / found["base_perplexity"]
    assert found["relative_change"] == pytest.approx(change)
    assert abs(change) > 0.05  # a high learning rate on unrelated data moved it
    assert found["documents"] == 3 and found["read"] == 3 and found["rejected"] == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("forgetting:")]
    assert f"{found['base_perplexity']:.3f} -> {found['tuned_perplexity']:.3f}" in line


def test_lora_pt_forgetting_on_wiki_matches_the_disabled_adapter(
    tmp_path, tiny_model_dir, general_text
):
    wiki = shared_file("wiki_demo.txt")
    result = train_tiny(
        tmp_path,
        tiny_model_dir,
        general_text,
        "lora-pt",
        "train.stage=pt",
        "data.cutoff_len=32",
        "method.dropout=0.0",
        "train.learning_rate=5e-2",
        "train.max_steps=10",
        f"train.forgetting_eval.data={wiki}",
        "train.forgetting_eval.max_docs=4",
        "train.forgetting_eval.max_length=48",
    )
    found = result.summary["forgetting"]
    assert found["documents"] == 4 and found["read"] == 30 and found["truncated_documents"] == 4
    tuned, tokenizer = load_for_inference(result.run.root)
    texts = wiki.read_text(encoding="utf-8").splitlines()[:4]
    with tuned.disable_adapter():  # the base model, without a second copy
        base = perplexity(tuned, tokenizer, texts, max_length=48).perplexity
    assert found["base_perplexity"] == pytest.approx(base, rel=1e-5)
    after = perplexity(tuned, tokenizer, texts, max_length=48).perplexity
    assert found["tuned_perplexity"] == pytest.approx(after, rel=1e-4)
    assert found["tuned_perplexity"] != pytest.approx(found["base_perplexity"], rel=1e-3)


def test_forgetting_data_mistakes_stop_before_training(tmp_path, tiny_model_dir, alpaca_file):
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": " "}\n\n{"text": ""}\n', encoding="utf-8")
    args = (tmp_path, tiny_model_dir, alpaca_file)
    with pytest.raises(ConfigError, match=r"^train\.forgetting_eval\.data: no non-empty documents"):
        train_tiny(*args, "blank", "train.max_steps=1", f"train.forgetting_eval.data={blank}")
    rejects = read_jsonl(tmp_path / "runs" / "blank" / "rejects.jsonl")
    assert [(r["line"], r["reason"][:14]) for r in rejects] == [
        (1, "empty document"),
        (3, "empty document"),
    ]
    missing = tmp_path / "missing.txt"
    with pytest.raises(DataError, match=rf"^{missing}: no such file"):
        train_tiny(*args, "missing", "train.max_steps=1", f"train.forgetting_eval.data={missing}")
    assert not (tmp_path / "runs" / "missing" / "summary.json").exists()
