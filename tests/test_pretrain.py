"""Continued pre-training: plain-text documents to blocks or packed pieces, and the pt stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import shared_file
from helpers import run_config, train_tiny
from typer.testing import CliRunner

from tunesmith.cli.main import app
from tunesmith.config.schema import DataConfig
from tunesmith.data.pretrain import build_pretrain_data, sources, tokenize_documents
from tunesmith.data.render import IGNORE_INDEX
from tunesmith.runs.folder import RunFolder, read_jsonl
from tunesmith.train.trainer import CausalLMTrainer
from tunesmith.utils.errors import ConfigError, DataError

DOCS = [
    "hello who are you? I am a small assistant built for tests.",
    "What is the capital of France? The capital of France is Paris.",
    "user assistant system: answer briefly and kindly, please.",
    "你好，我是一个测试助手。请问你叫什么名字？",
]


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(DOCS) + "\n", encoding="utf-8")  # documents on lines 1, 3, 5, 7
    return path


def _build(paths, tokenizer, packing: bool, reject=None, **data):
    cfg = DataConfig(train=[str(p) for p in paths], **data)
    return build_pretrain_data(sources(cfg), cfg, tokenizer, packing, reject)


def _doc_ids(tokenizer, texts=DOCS) -> list[list[int]]:
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    return [[*x, tokenizer.eos_token_id] for x in ids]


# --- data ---------------------------------------------------------------------------------


def test_blocks_are_the_document_stream_cut_at_cutoff_len(text_file, tiny_tokenizer):
    built = _build([text_file], tiny_tokenizer, packing=False, cutoff_len=16)
    stream = [t for ids in _doc_ids(tiny_tokenizer) for t in ids]
    blocks = [e["input_ids"] for e in built.examples]
    assert all(e["labels"] == e["input_ids"] for e in built.examples)
    assert all(len(b) == 16 for b in blocks[:-1]) and 0 < len(blocks[-1]) <= 16
    kept = [t for b in blocks for t in b]
    assert kept == stream[: len(kept)]  # in order, documents joined by eos
    stats = built.stats
    assert stats["documents"] == 4 and stats["read"] == 4 and stats["rejected"] == 0
    assert stats["layout"] == "blocks" and stats["examples"] == len(blocks)
    assert stats["tokens"] + stats["dropped_tokens"] == stats["tokens_read"] == len(stream)


def _cutoffs_by_tail(total: int) -> tuple[int, int]:
    """A cutoff_len whose last block is under a quarter block, and one whose tail is kept."""
    short = next(c for c in range(8, total) if 0 < 4 * (total % c) < c)
    kept = next(c for c in range(8, total) if 4 * (total % c) >= c and total % c)
    return short, kept


def test_a_short_last_block_is_dropped_and_counted(text_file, tiny_tokenizer):
    total = sum(len(x) for x in _doc_ids(tiny_tokenizer))
    short, kept = _cutoffs_by_tail(total)
    dropped = _build([text_file], tiny_tokenizer, packing=False, cutoff_len=short)
    assert dropped.stats["dropped_tokens"] == total % short
    assert all(len(e["input_ids"]) == short for e in dropped.examples)
    assert dropped.stats["tokens"] == total - total % short
    tail = _build([text_file], tiny_tokenizer, packing=False, cutoff_len=kept)
    assert tail.stats["dropped_tokens"] == 0
    assert len(tail.examples[-1]["input_ids"]) == total % kept


def test_packed_layout_keeps_documents_apart_and_splits_long_ones(tmp_path, tiny_tokenizer):
    long_doc = " ".join(DOCS * 3)
    path = tmp_path / "docs.txt"
    path.write_text(f"{DOCS[0]}\n{long_doc}\n{DOCS[1]}\n", encoding="utf-8")
    built = _build([path], tiny_tokenizer, packing=True, cutoff_len=32)
    expected = _doc_ids(tiny_tokenizer, [DOCS[0], long_doc, DOCS[1]])
    assert len(expected[1]) > 64  # at least three pieces
    pieces = [e["input_ids"] for e in built.examples]
    assert all(e["labels"] == e["input_ids"] for e in built.examples)
    assert pieces[0] == expected[0] and pieces[-1] == expected[2]  # short documents: whole
    middle = pieces[1:-1]  # the long document, in order, in cutoff_len pieces
    assert all(len(p) == 32 for p in middle[:-1]) and 2 <= len(middle[-1]) <= 32
    joined = [t for p in middle for t in p]
    assert joined == expected[1][: len(joined)]
    stats = built.stats
    assert len(joined) + stats["dropped_tokens"] == len(expected[1])
    assert stats["layout"] == "documents" and stats["split_documents"] == 1
    assert stats["examples"] == len(pieces) and stats["tokens"] == sum(map(len, pieces))


def test_empty_documents_are_rejected_with_their_line(tmp_path, tiny_tokenizer):
    path = tmp_path / "docs.jsonl"
    rows = [{"text": DOCS[0]}, {"text": "  \t "}, {"text": DOCS[1]}, {"text": ""}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    rejected = []
    built = _build([path], tiny_tokenizer, True, lambda *r: rejected.append(r), cutoff_len=64)
    assert [(Path(s), line, rec) for s, line, _, rec in rejected] == [
        (path, 2, {"text": "  \t "}),
        (path, 4, {"text": ""}),
    ]
    assert all(reason.startswith("empty document") for _, _, reason, _ in rejected)
    assert built.stats["read"] == 4 and built.stats["rejected"] == 2
    assert built.stats["documents"] == 2 == len(built.examples)


def test_records_without_text_stop_or_are_skipped(tmp_path, tiny_tokenizer):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "fine"}\n{"body": "x"}\n{"text": ["a"]}\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:2: no 'text' column \(keys found: \['body'\]"):
        _build([path], tiny_tokenizer, True)
    rejected = []
    built = _build([path], tiny_tokenizer, True, lambda *r: rejected.append(r), on_error="skip")
    assert [(line, reason) for _, line, reason, _ in rejected] == [
        (2, "no 'text' column (keys found: ['body']); rename it with data.columns.text"),
        (3, "'text' must be a string, got list"),
    ]
    assert built.stats["documents"] == 1 and built.stats["rejected"] == 2


def test_text_column_is_remappable_and_txt_lines_stay_text(tmp_path, text_file, tiny_tokenizer):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"content": DOCS[2], "text": "not this"}) + "\n", encoding="utf-8")
    built = _build([path, text_file], tiny_tokenizer, True, columns={"text": "content"})
    assert built.examples[0]["input_ids"] == _doc_ids(tiny_tokenizer, [DOCS[2]])[0]
    assert built.stats["documents"] == 5


def test_max_samples_limits_documents(text_file, tiny_tokenizer):
    built = _build([text_file], tiny_tokenizer, True, max_samples=3)
    assert built.stats["documents"] == 3 and built.stats["beyond_max_samples"] == 1


def test_config_mistakes_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.format: 'alpaca' is a chat format"):
        sources(DataConfig(train=["a.txt"], format="alpaca"))
    with pytest.raises(ConfigError, match=r"^data\.columns: \['instruction'\]"):
        sources(DataConfig(train=["a.txt"], columns={"instruction": "q"}))


def test_tokenizer_without_eos_is_refused(tiny_tokenizer):
    from tunesmith.data.pretrain import Document

    class NoEos:
        eos_token_id = None

    with pytest.raises(ConfigError, match="tokenizer has no eos token"):
        tokenize_documents([Document("x", "f", 1)], NoEos())


def test_registry_pretrain_datasets_and_refusal_of_chat_data(tiny_tokenizer):
    for name in ("wiki_demo.txt", "c4_demo.jsonl"):  # the files the two entries name
        shared_file(name)
    info = str(shared_file("dataset_info.json"))
    cfg = DataConfig(registry=info, dataset=["wiki_demo", "c4_demo"], cutoff_len=128)
    found = sources(cfg)
    assert [(Path(s.paths[0]).name, s.fmt, s.columns) for s in found] == [
        ("wiki_demo.txt", "text", {"text": "text"}),
        ("c4_demo.jsonl", "text", {"text": "text"}),
    ]
    built = build_pretrain_data(found, cfg, tiny_tokenizer, packing=False)
    assert built.stats["read"] == built.stats["documents"] == 330
    assert all(len(e["input_ids"]) <= 128 for e in built.examples)
    with pytest.raises(ConfigError, match=r"^data\.dataset: 'alpaca_en_demo' is sft data"):
        sources(DataConfig(registry=info, dataset="alpaca_en_demo"))


# --- the pt stage -------------------------------------------------------------------------


# every run here: full pre-training at a rate that moves the tiny model
PT = ("train.stage=pt", "method.type=full", "train.learning_rate=1e-2")


def _pt(tmp_path, model_dir, name, *overrides):
    return train_tiny(tmp_path, model_dir, None, name, *PT, *overrides)


@pytest.fixture
def batches(monkeypatch) -> list[dict]:
    """Every batch the trainer computes a loss from."""
    seen, original = [], CausalLMTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        seen.append({k: v.clone() for k, v in inputs.items()})
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(CausalLMTrainer, "compute_loss", spy)
    return seen


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_pt_blocks_learn_every_token(tmp_path, tiny_model_dir, text_file, batches):
    result = _pt(
        tmp_path,
        tiny_model_dir,
        "blocks",
        f"data.train={text_file}",
        "data.cutoff_len=24",
        "train.packing=false",
        "train.max_steps=25",
    )
    losses = [m["loss"] for m in read_jsonl(result.run.metrics_path)]
    assert len(losses) == 25 and _mean(losses[-3:]) < 0.5 * _mean(losses[:3])
    for batch in batches:
        ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
        assert ids.shape[1] <= 24
        assert torch.equal(labels[mask == 1], ids[mask == 1])  # every real token is trained
        assert (labels[mask == 0] == IGNORE_INDEX).all()
    summary = json.loads((result.run.root / "summary.json").read_text())
    assert summary["data"]["layout"] == "blocks" and summary["data"]["documents"] == 4
    assert read_jsonl(result.run.root.parent / "index.jsonl")[0]["stage"] == "pt"


def test_pt_packed_on_the_demo_corpora(tmp_path, tiny_model_dir, batches):
    wiki, c4 = shared_file("wiki_demo.txt"), shared_file("c4_demo.jsonl")
    result = _pt(
        tmp_path,
        tiny_model_dir,
        "packed",
        f"data.train=[{wiki},{c4}]",
        "data.cutoff_len=64",
        "data.max_samples=40",  # 30 wiki articles and the first 10 c4 pages
        "train.max_steps=30",
    )
    losses = [m["loss"] for m in read_jsonl(result.run.metrics_path)]
    assert _mean(losses[-3:]) < 0.8 * _mean(losses[:3])
    stats = json.loads((result.run.root / "summary.json").read_text())["data"]
    assert stats["read"] == 330 and stats["documents"] == 40 and stats["beyond_max_samples"] == 290
    assert stats["split_documents"] >= 30  # every wiki article is longer than 64 tokens
    for batch in batches:
        ids, labels, positions = batch["input_ids"], batch["labels"], batch["position_ids"]
        starts = positions[0] == 0
        assert torch.equal(labels[0][~starts], ids[0][~starts])  # trained but for example starts
        assert (labels[0][starts] == IGNORE_INDEX).all()
        assert positions.max() < 64  # no example is longer than cutoff_len


def test_pt_rejects_go_to_the_run_folder(tmp_path, tiny_model_dir):
    path = tmp_path / "docs.jsonl"
    rows = [{"text": DOCS[0]}, {"text": " "}, {"text": DOCS[1]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    result = _pt(tmp_path, tiny_model_dir, "rejects", f"data.train={path}", "train.max_steps=1")
    (reject,) = read_jsonl(result.run.rejects_path)
    assert (reject["source"], reject["line"]) == (str(path), 2)
    assert reject["reason"].startswith("empty document")
    assert result.summary["data"]["rejected"] == 1


def test_cli_train_dispatches_on_the_stage(tmp_path, tiny_model_dir, text_file, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [
        f"model.name_or_path={tiny_model_dir}",
        f"data.train={text_file}",
        f"output.dir={tmp_path / 'runs'}",
        "output.name=cli-pt",
        "train.stage=pt",
        "train.max_steps=2",
    ]
    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "runs" / "cli-pt" / "summary.json").read_text())
    assert summary["data"]["layout"] == "documents" and summary["steps"] == 2


def test_run_sft_refuses_a_pt_config(tmp_path, tiny_model_dir, text_file):
    from tunesmith.train.sft import run_sft

    config = run_config(tmp_path, tiny_model_dir, text_file, "wrong", *PT)
    with pytest.raises(ConfigError, match=r"^train\.stage: 'pt' given to the sft stage"):
        run_sft(config, RunFolder(tmp_path / "wrong"))


def test_plain_text_given_to_sft_points_at_the_pt_stage(text_file, tiny_tokenizer):
    from tunesmith.data.dataset import build_sft_data

    cfg = DataConfig(train=[str(text_file)])
    with pytest.raises(DataError, match=rf"^{text_file}:1: cannot detect .*train\.stage=pt$"):
        build_sft_data(cfg.train, cfg, tiny_tokenizer)
