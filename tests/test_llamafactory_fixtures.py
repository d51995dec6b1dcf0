"""LLaMA-Factory's dataset_info.json path, from small fixtures committed with the tests.

tests/fixtures/llamafactory/ holds a registry in LLaMA-Factory's own format (alpaca with and
without renamed columns, sharegpt with LF's and with OpenAI-style tags, a ranking preference set,
a KTO set, pretraining text, hub-only and not-shipped entries) and a few records of each. The
tests on LLaMA-Factory's real demo data (test_data_registry, test_preference) read ../shared and
skip without it; these run in a clone alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.config.schema import DataConfig
from tunesmith.data.dataset import build_sft_data
from tunesmith.data.formats import load_conversations
from tunesmith.data.preference import read_preference_records
from tunesmith.data.registry import (
    Source,
    load_registry,
    preference_sources,
    resolve_dataset,
    sft_sources,
)
from tunesmith.utils.errors import ConfigError

FOLDER = Path(__file__).parent / "fixtures" / "llamafactory"
INFO = FOLDER / "dataset_info.json"
SFT = {  # name -> (format, records)
    "identity_mini": ("alpaca", 3),
    "alpaca_mini": ("alpaca", 3),
    "orca_mini": ("alpaca", 2),
    "sharegpt_mini": ("sharegpt", 2),
    "chat_tags_mini": ("sharegpt", 2),
}


def test_every_entry_loads_with_a_kind_a_place_and_its_line():
    entries = load_registry(INFO)
    assert len(entries) == 11
    assert {e.kind for e in entries.values()} == {"sft", "preference", "kto", "pretrain"}
    assert all(e.files or e.hub for e in entries.values())
    lines = INFO.read_text(encoding="utf-8").splitlines()
    assert all(f'"{name}"' in lines[e.line - 1] for name, e in entries.items())


@pytest.mark.parametrize("name", list(SFT))
def test_sft_entries_resolve_and_read(name):
    fmt, count = SFT[name]
    entry = resolve_dataset(INFO, name)
    assert entry.kind == "sft" and entry.fmt == fmt and len(entry.files) == 1
    conversations, stats = load_conversations(entry.files, entry.fmt, entry.columns)
    assert stats["read"] == stats["kept"] == count
    assert all(c.messages[-1]["role"] == "assistant" for c in conversations)


def test_translated_columns_and_tags():
    entries = load_registry(INFO)
    assert entries["orca_mini"].columns == {
        "instruction": "question",
        "output": "response",
        "system": "system_prompt",
    }
    assert entries["chat_tags_mini"].columns == {
        "conversations": "messages",
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
    }
    dpo, kto, c4 = entries["dpo_mini"], entries["kto_mini"], entries["c4_mini"]
    assert (dpo.kind, dpo.ranking, dpo.extra) == (
        "preference",
        True,
        {"chosen": "chosen", "rejected": "rejected"},
    )
    assert (kto.kind, kto.fmt, kto.extra) == ("kto", "sharegpt", {"kto_tag": "label"})
    assert (c4.kind, c4.fmt, c4.columns) == ("pretrain", "text", {"text": "text"})


def test_alpaca_history_system_and_input_are_read_as_lf_does():
    entry = resolve_dataset(INFO, "alpaca_mini")
    conversations, _ = load_conversations(entry.files, entry.fmt, entry.columns)
    assert conversations[1].messages == [
        {"role": "system", "content": "You are a translator."},
        {"role": "user", "content": "Translate to French: thank you"},
        {"role": "assistant", "content": "Merci"},
        {"role": "user", "content": "Translate to French.\nGood morning"},
        {"role": "assistant", "content": "Bonjour"},
    ]
    orca = resolve_dataset(INFO, "orca_mini")
    first = load_conversations(orca.files, orca.fmt, orca.columns)[0][0]
    assert first.messages[0] == {"role": "system", "content": "You are a helpful assistant."}


def test_hub_only_unknown_and_missing_entries_are_sentences():
    with pytest.raises(ConfigError) as err:
        resolve_dataset(INFO, "alpaca_hub")
    assert str(err.value).startswith(f"{INFO}:")
    assert "'alpaca_hub': the data is on a hub (hf_hub_url: llamafactory/alpaca_en)" in str(
        err.value
    )
    with pytest.raises(ConfigError, match=r"on a hub \(ms_hub_url: deepctrl/"):
        resolve_dataset(INFO, "deepctrl_ms")
    with pytest.raises(ConfigError, match="no dataset named 'alpaca_mni'; did you mean"):
        resolve_dataset(INFO, "alpaca_mni")
    with pytest.raises(ConfigError, match=r"'not_shipped_demo': no such file or folder"):
        resolve_dataset(INFO, "not_shipped_demo")


def test_a_registry_dataset_trains_exactly_like_its_file(tiny_tokenizer):
    by_name = DataConfig(registry=str(INFO), dataset="identity_mini", cutoff_len=64)
    by_file = DataConfig(train=[str(FOLDER / "identity_mini.json")], cutoff_len=64)
    assert sft_sources(by_name) == [Source(by_file.train, "alpaca", {})]
    built_by_name = build_sft_data(sft_sources(by_name), by_name, tiny_tokenizer)
    built_by_file = build_sft_data(by_file.train, by_file, tiny_tokenizer)
    assert len(built_by_name.examples) == 3
    assert built_by_name.examples == built_by_file.examples
    assert built_by_name.stats == built_by_file.stats


def test_several_datasets_combine_and_other_kinds_are_refused_by_sft(tiny_tokenizer):
    cfg = DataConfig(registry=str(INFO), dataset=list(SFT), cutoff_len=64)
    built = build_sft_data(sft_sources(cfg), cfg, tiny_tokenizer)
    assert built.stats["read"] == built.stats["examples"] == sum(n for _, n in SFT.values())
    for name, kind in [("dpo_mini", "preference"), ("kto_mini", "kto"), ("c4_mini", "pretrain")]:
        with pytest.raises(ConfigError, match=rf"'{name}' is {kind} data .*not supported by SFT"):
            sft_sources(DataConfig(registry=str(INFO), dataset=name))


def test_preference_and_kto_files_read_as_lf_writes_them():
    dpo_file, kto_file = FOLDER / "dpo_mini.json", FOLDER / "kto_mini.json"
    raw = json.loads(dpo_file.read_text(encoding="utf-8"))
    pairs, stats = read_preference_records([dpo_file])
    assert stats == {"read": 3, "rejected": 0}
    assert [p.chosen for p in pairs] == [r["chosen"]["value"] for r in raw]
    assert [p.rejected for p in pairs] == [r["rejected"]["value"] for r in raw]
    assert pairs[2].prompt[-1]["content"] == raw[2]["conversations"][-1]["value"]
    kto_raw = json.loads(kto_file.read_text(encoding="utf-8"))
    kto, _ = read_preference_records([kto_file])
    assert [r.label for r in kto] == [r["label"] for r in kto_raw]
    assert kto[1].completion == kto_raw[1]["messages"][-1]["content"]


def test_preference_sources_through_the_registry():
    cfg = DataConfig(registry=str(INFO), dataset=["dpo_mini"])
    (source,) = preference_sources(cfg)
    assert [Path(p).name for p in source.paths] == ["dpo_mini.json"]
    kto_cfg = DataConfig(registry=str(INFO), dataset=["kto_mini", "dpo_mini"])
    assert len(preference_sources(kto_cfg, kto=True)) == 2


@pytest.mark.parametrize("name", [*SFT, "c4_mini"])
def test_inspect_reads_an_entry_with_its_columns(name):
    """`tunesmith data inspect NAME --registry` and the Data tab: the entry's format and column
    mapping, a pre-training entry's text column included (LLaMA-Factory's `prompt`)."""
    from tunesmith.data.quality.analyze import inspect_data

    entry = resolve_dataset(INFO, name)
    records = sum(1 for line in entry.files[0].read_text().splitlines() if line.strip())
    report = inspect_data(entry.files, entry.fmt, entry.columns)
    assert report["records"]["malformed"] == 0 and report["records"]["valid"] > 0
    if entry.kind == "pretrain":
        assert entry.columns == {"text": "text"} and report["records"]["read"] == records
