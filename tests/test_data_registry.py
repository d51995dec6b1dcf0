"""Registries: LLaMA-Factory's dataset_info.json read unchanged, our YAML, and data.dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import shared_file

from tunesmith.config.load import load_config
from tunesmith.config.schema import DataConfig
from tunesmith.data.dataset import build_sft_data
from tunesmith.data.formats import load_conversations
from tunesmith.data.registry import (
    Source,
    load_registry,
    resolve_dataset,
    sft_sources,
)
from tunesmith.utils.errors import ConfigError


@pytest.fixture
def dataset_info() -> Path:
    return shared_file("dataset_info.json")


def _json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


# --- LLaMA-Factory's real registry --------------------------------------------------------


def test_every_llamafactory_entry_loads_with_a_kind_and_a_place(dataset_info):
    entries = load_registry(dataset_info)
    assert len(entries) == 104
    assert {e.kind for e in entries.values()} == {"sft", "preference", "kto", "pretrain"}
    assert all(e.files or e.hub for e in entries.values())
    assert all(e.line and e.source == str(dataset_info) for e in entries.values())
    lines = dataset_info.read_text().splitlines()
    assert all(f'"{name}"' in lines[e.line - 1] for name, e in entries.items())


def test_llamafactory_local_entries_resolve_to_their_files(dataset_info):
    folder = dataset_info.parent
    for name in ("alpaca_en_demo", "identity"):
        entry = resolve_dataset(dataset_info, name)
        assert (entry.files, entry.fmt, entry.columns, entry.kind) == (
            [folder / f"{name}.json"],
            "alpaca",
            {},
            "sft",
        )
    glaive = resolve_dataset(dataset_info, "glaive_toolcall_en_demo")
    assert glaive.files == [folder / "glaive_toolcall_en_demo.json"]
    assert (glaive.fmt, glaive.columns, glaive.extra) == (
        "sharegpt",
        {"conversations": "conversations", "tools": "tools"},
        {},
    )
    conversations, stats = load_conversations(
        glaive.files, glaive.fmt, glaive.columns, on_error="skip"
    )
    assert stats["read"] == stats["kept"] == 300  # tool calls and results read, tools kept
    assert sum(c.tools is not None for c in conversations) == 191  # records with a tool list


def test_llamafactory_kinds_and_translated_columns(dataset_info):
    entries = load_registry(dataset_info)
    dpo, kto, c4 = entries["dpo_en_demo"], entries["kto_en_demo"], entries["c4_demo"]
    assert (dpo.kind, dpo.ranking, dpo.extra) == (
        "preference",
        True,
        {"chosen": "chosen", "rejected": "rejected"},
    )
    assert (kto.kind, kto.fmt, kto.extra) == ("kto", "sharegpt", {"kto_tag": "label"})
    assert kto.columns == {
        "conversations": "messages",
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
    }
    assert (c4.kind, c4.fmt, c4.columns) == ("pretrain", "text", {"text": "text"})
    assert entries["openorca"].columns == {
        "instruction": "question",
        "output": "response",
        "system": "system_prompt",
    }
    # an openai-like sharegpt entry keeps sharegpt with its tags, and our reader reads it
    kto_file = resolve_dataset(dataset_info, "kto_en_demo")
    conversations, stats = load_conversations(kto_file.files, kto_file.fmt, kto_file.columns)
    assert stats["kept"] == 300 and conversations[0].messages[0]["role"] == "user"


def test_hub_only_entries_say_where_the_data_is(dataset_info):
    with pytest.raises(ConfigError) as err:
        resolve_dataset(dataset_info, "alpaca_en")
    message = str(err.value)
    assert message.startswith(f"{dataset_info}:")
    assert "'alpaca_en': the data is on a hub (hf_hub_url: llamafactory/alpaca_en)" in message
    assert "local" in message
    with pytest.raises(ConfigError, match=r"on a hub \(ms_hub_url: deepctrl/"):
        resolve_dataset(dataset_info, "deepctrl")


def test_unknown_names_and_missing_files(dataset_info):
    with pytest.raises(ConfigError, match="no dataset named 'identiy'; did you mean 'identity'"):
        resolve_dataset(dataset_info, "identiy")
    with pytest.raises(ConfigError, match=r"no dataset named 'zzz'$"):
        resolve_dataset(dataset_info, "zzz")
    with pytest.raises(ConfigError, match=r"'alpaca_zh_demo': no such file or folder: .*zh_demo"):
        resolve_dataset(dataset_info, "alpaca_zh_demo")  # listed upstream, not shipped here


# --- LLaMA-Factory registries of our own making -------------------------------------------


def test_renamed_alpaca_columns_read_a_file_end_to_end(tmp_path):
    (tmp_path / "orca.jsonl").write_text(
        json.dumps({"question": "Q?", "response": "A.", "system_prompt": "Be kind."}) + "\n"
    )
    registry = _json(
        tmp_path / "dataset_info.json",
        {
            "orca": {
                "file_name": "orca.jsonl",
                "columns": {
                    "prompt": "question",
                    "response": "response",
                    "system": "system_prompt",
                },
            }
        },
    )
    entry = resolve_dataset(registry, "orca")
    conversations, _ = load_conversations(entry.files, entry.fmt, entry.columns)
    assert conversations[0].messages == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "A."},
    ]


def test_a_folder_file_name_means_every_data_file_in_it(tmp_path):
    data = tmp_path / "shards"
    data.mkdir()
    for name in ("b.jsonl", "a.json", ".hidden.jsonl", "README.md"):
        (data / name).write_text("[]")
    (data / "sub").mkdir()
    registry = _json(tmp_path / "dataset_info.json", {"shards": {"file_name": "shards"}})
    assert resolve_dataset(registry, "shards").files == [data / "a.json", data / "b.jsonl"]
    (data / "a.json").unlink()
    (data / "b.jsonl").unlink()
    with pytest.raises(
        ConfigError, match=r"dataset_info\.json:2: dataset 'shards': folder .* no data"
    ):
        resolve_dataset(registry, "shards")


def test_a_local_file_wins_over_a_hub_address(tmp_path):
    (tmp_path / "d.json").write_text("[]")
    registry = _json(
        tmp_path / "dataset_info.json", {"d": {"hf_hub_url": "org/d", "file_name": "d.json"}}
    )
    assert resolve_dataset(registry, "d").files == [tmp_path / "d.json"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"file_name": "x.json", "formatting": "openai"}, "formatting 'openai' unknown"),
        ({"split": "train"}, "no 'file_name' and no hub address"),
        ({"file_name": "x.json", "columns": ["prompt"]}, "'columns' must map names"),
        ("x.json", "expected a mapping, got str"),
    ],
)
def test_malformed_llamafactory_entries_name_the_line(tmp_path, entry, message):
    registry = _json(tmp_path / "dataset_info.json", {"ok": {"file_name": "a.json"}, "bad": entry})
    with pytest.raises(ConfigError, match=rf"dataset_info\.json:5: dataset 'bad': {message}"):
        load_registry(registry)


def test_unreadable_registries(tmp_path):
    with pytest.raises(ConfigError, match="no such registry file"):
        load_registry(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match=r"unsupported registry type '\.txt'"):
        load_registry(tmp_path / "reg.txt")
    (tmp_path / "broken.json").write_text('{\n  "a": {\n}')
    with pytest.raises(ConfigError, match=r"broken\.json:3: invalid JSON"):
        load_registry(tmp_path / "broken.json")
    _json(tmp_path / "list.json", [])
    with pytest.raises(ConfigError, match="expected a mapping of dataset names"):
        load_registry(tmp_path / "list.json")


# --- our YAML registry ----------------------------------------------------------------------


YAML_REGISTRY = """\
chat:
  file: chat.jsonl
  format: sharegpt
  columns: {conversations: dialog, chosen: better}
  description: a chat set
parts:
  files: [a.jsonl, b.jsonl]
prefs:
  file: chat.jsonl
  kind: preference
corpus:
  file: corpus
  kind: pretrain
"""


def test_yaml_registry_entries(tmp_path):
    (tmp_path / "registry.yaml").write_text(YAML_REGISTRY)
    entries = load_registry(tmp_path / "registry.yaml")
    chat = entries["chat"]
    assert (chat.files, chat.fmt, chat.columns, chat.extra, chat.kind, chat.line) == (
        [tmp_path / "chat.jsonl"],
        "sharegpt",
        {"conversations": "dialog"},
        {"chosen": "better"},
        "sft",
        1,
    )
    assert entries["parts"].files == [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    assert entries["parts"].fmt == "auto"
    assert (entries["prefs"].kind, entries["prefs"].ranking) == ("preference", True)
    assert (entries["corpus"].kind, entries["corpus"].fmt, entries["corpus"].line) == (
        "pretrain",
        "text",
        11,
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("fiel: a.jsonl", r"unknown key 'fiel' \(did you mean 'file'\?\)"),
        ("file: a.jsonl\n  format: chatml", "format 'chatml' unknown; allowed: auto, alpaca"),
        ("file: a.jsonl\n  kind: rm", "kind 'rm' unknown; allowed: sft, preference"),
        ("file: a.jsonl\n  format: text", "format 'text' goes with kind 'pretrain'"),
        ("file: a.jsonl\n  files: [b.jsonl]", "give exactly one of 'file'"),
        ("files: []", "'file' must be a path and 'files' a non-empty list"),
        ("file: a.jsonl\n  columns: {question: q}", "unknown column name 'question'"),
    ],
)
def test_malformed_yaml_entries_name_the_line(tmp_path, entry, message):
    path = tmp_path / "registry.yml"
    path.write_text(f"fine:\n  file: a.jsonl\nbad:\n  {entry}\n")
    with pytest.raises(ConfigError, match=rf"registry\.yml:3: dataset 'bad': {message}"):
        load_registry(path)


def test_invalid_yaml_names_the_line(tmp_path):
    (tmp_path / "r.yaml").write_text("a:\n  file: x\n b: [\n")
    with pytest.raises(ConfigError, match=r"r\.yaml:3: invalid YAML"):
        load_registry(tmp_path / "r.yaml")


# --- data.registry + data.dataset ----------------------------------------------------------


def test_data_dataset_accepts_one_name_a_comma_list_or_a_list():
    assert DataConfig(dataset="identity").dataset == ["identity"]
    assert DataConfig(dataset="identity, alpaca_en_demo").dataset == ["identity", "alpaca_en_demo"]
    cfg = load_config(None, ["data.registry=r.json", "data.dataset=[a, b]"])
    assert (cfg.data.registry, cfg.data.dataset) == ("r.json", ["a", "b"])


def test_a_registry_dataset_trains_exactly_like_its_file(dataset_info, tiny_tokenizer):
    by_name = DataConfig(registry=str(dataset_info), dataset="identity", cutoff_len=64)
    by_file = DataConfig(train=[str(dataset_info.parent / "identity.json")], cutoff_len=64)
    assert sft_sources(by_name) == [Source(by_file.train, "alpaca", {})]
    built_by_name = build_sft_data(sft_sources(by_name), by_name, tiny_tokenizer)
    built_by_file = build_sft_data(by_file.train, by_file, tiny_tokenizer)
    assert len(built_by_name.examples) == 91
    assert built_by_name.examples == built_by_file.examples
    assert built_by_name.stats == built_by_file.stats


def test_train_files_and_datasets_combine(dataset_info, tiny_tokenizer, alpaca_file):
    cfg = DataConfig(train=[str(alpaca_file)], registry=str(dataset_info), dataset="identity")
    sources = sft_sources(cfg)
    assert [Path(s.paths[0]).name for s in sources] == ["train.jsonl", "identity.json"]
    built = build_sft_data(sources, cfg, tiny_tokenizer)
    assert built.stats["read"] == built.stats["examples"] == 8 + 91
    assert built.stats["formats"] == {
        str(alpaca_file): "alpaca",
        str(dataset_info.parent / "identity.json"): "alpaca",
    }


def test_explicit_data_columns_override_the_entry_columns(tmp_path):
    registry = _json(
        tmp_path / "dataset_info.json",
        {"orca": {"file_name": "o.jsonl", "columns": {"prompt": "question", "response": "r"}}},
    )
    (tmp_path / "o.jsonl").write_text("")
    cfg = DataConfig(registry=str(registry), dataset="orca", columns={"output": "answer"})
    (source,) = sft_sources(cfg)
    assert source.columns == {"instruction": "question", "output": "answer"}


def test_dataset_errors_name_the_config_key(dataset_info, tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.registry: data\.dataset names \['identity'\]"):
        sft_sources(DataConfig(dataset="identity"))
    with pytest.raises(ConfigError, match=r"^data\.registry: .*no such registry file"):
        sft_sources(DataConfig(registry=str(tmp_path / "nope.json"), dataset="identity"))
    with pytest.raises(ConfigError, match=r"^data\.dataset: .*did you mean 'identity'"):
        sft_sources(DataConfig(registry=str(dataset_info), dataset="identify"))
    with pytest.raises(ConfigError, match=r"^data\.dataset: .*'alpaca_en': the data is on a hub"):
        sft_sources(DataConfig(registry=str(dataset_info), dataset="alpaca_en"))
    for name, kind in [
        ("dpo_en_demo", "preference"),
        ("kto_en_demo", "kto"),
        ("c4_demo", "pretrain"),
    ]:
        with pytest.raises(
            ConfigError,
            match=rf"^data\.dataset: '{name}' is {kind} data .*not supported by SFT yet",
        ):
            sft_sources(DataConfig(registry=str(dataset_info), dataset=name))


def test_without_datasets_the_sources_are_the_train_files():
    cfg = DataConfig(train=["a.jsonl"], format="sharegpt", columns={"conversations": "c"})
    assert sft_sources(cfg) == [Source(["a.jsonl"], "sharegpt", {"conversations": "c"})]
    assert sft_sources(DataConfig()) == []
