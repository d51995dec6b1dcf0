"""The web workshop's pieces without a browser: the string tables, the schema form and the YAML it
writes (loaded as the CLI loads it), the workshop actions the UI added (queue, review decisions,
convert), the --host/--auth rule, and the page building in both languages."""

from __future__ import annotations

import json
import re
import shutil
import typing
from pathlib import Path

import pytest
import yaml
from helpers import write_alpaca

from tunesmith.cli.ui import parse_auth
from tunesmith.config.load import load_config
from tunesmith.config.schema import STAGE_SETTINGS, RunConfig, TrainConfig
from tunesmith.ui import form, strings
from tunesmith.utils.errors import TunesmithError
from tunesmith.workshop import actions
from tunesmith.workshop.workspace import Workspace

UI_SOURCES = Path(__file__).resolve().parents[1] / "src" / "tunesmith" / "ui"


def test_both_languages_have_the_same_keys_and_placeholders():
    assert set(strings.EN) == set(strings.ZH)
    for key, text in strings.EN.items():
        names = set(re.findall(r"{(\w+)", text))
        assert names == set(re.findall(r"{(\w+)", strings.ZH[key])), key


def test_every_key_the_tabs_use_is_in_the_tables():
    used = set()
    for path in UI_SOURCES.glob("*.py"):
        used |= set(re.findall(r'ctx\.t\(\s*"(\w+)"', path.read_text(encoding="utf-8")))
    assert used and used <= set(strings.EN), sorted(used - set(strings.EN))
    with pytest.raises(TunesmithError, match="language 'fr'"):
        strings.table("fr")


def _values(fields, **given):
    return [given.get(f.key, form.shown_value(f)) for f in fields]


def test_the_form_covers_every_method_and_plain_train_field():
    fields = form.form_fields()
    keys = {f.key for f in fields}
    assert {"train.learning_rate", "train.stage", "data.cutoff_len", "model.name_or_path"} <= keys
    with_fields = {m for m, cls in form.METHODS.items() if set(cls.model_fields) - {"type"}}
    assert {f.method for f in fields if f.method} == with_fields and "lora" in with_fields
    assert "output.dir" not in keys  # the workshop chooses where runs go


@pytest.mark.parametrize("method", ["lora", "freeze", "prefix", "hybrid", "full"])
def test_form_yaml_loads_into_the_same_config_as_the_form(tmp_path, method):
    fields = form.form_fields()
    given = {
        "model.name_or_path": "model",
        "data.train": "train.jsonl, more.jsonl",
        "train.learning_rate": 1e-4,
        "train.max_steps": 7,
        "train.stage": "sft",
        "train.report_to": "",
        "output.name": "from-form",
        "data.max_samples": 0,  # an emptied optional number box
    }
    values = _values(fields, **given)
    text = form.form_yaml(fields, values, method)
    (tmp_path / "run.yaml").write_text(text, encoding="utf-8")
    loaded = load_config(tmp_path / "run.yaml")
    assert loaded == RunConfig.model_validate(form.form_config(fields, values, method))
    assert loaded.method.type == method and loaded.train.max_steps == 7
    assert loaded.data.train == ["train.jsonl", "more.jsonl"] and loaded.data.max_samples is None
    assert "cutoff_len" not in text  # defaults stay out of the YAML


def test_stage_sections_are_written_for_their_stages_only(tmp_path):
    fields = form.form_fields()
    changed = {
        "model.name_or_path": "model",
        "data.train": "train.csv",
        "train.cls.long_text": "chunk",
        "train.cls.max_chunks": 4,
        "train.preference.beta": 0.3,
        "train.distill.teacher": "teacher-model",
    }
    for stage, kept in [
        ("cls", {"cls": {"long_text": "chunk", "max_chunks": 4}}),
        ("orpo", {"preference": {"beta": 0.3}}),
        ("distill", {"distill": {"teacher": "teacher-model"}}),
        ("sft", {}),
    ]:
        values = _values(fields, **changed, **{"train.stage": stage})
        text = form.form_yaml(fields, values, "lora")
        written = yaml.safe_load(text).get("train", {})
        assert {k: v for k, v in written.items() if k != "stage"} == kept, stage
        (tmp_path / "run.yaml").write_text(text, encoding="utf-8")
        assert load_config(tmp_path / "run.yaml").train.stage == stage


def test_every_stage_settings_section_is_in_the_form():
    """A stage with settings of its own (its section's description says so) is listed in
    STAGE_SETTINGS, so the Train tab shows its fields when that stage is chosen."""
    stages = typing.get_args(TrainConfig.model_fields["stage"].annotation)
    assert set(STAGE_SETTINGS) <= set(stages)
    described = {
        name
        for name, info in TrainConfig.model_fields.items()
        if (info.description or "").startswith("Settings of stage")
    }
    assert described == set(STAGE_SETTINGS.values())
    keys = {f.key for f in form.form_fields() if f.stages}
    assert {"train.cls.long_text", "train.preference.beta", "train.distill.teacher"} <= keys


def test_lists_and_text_or_list_fields_parse_as_the_schema_types():
    by_key = {(f.key, f.method): f for f in form.form_fields()}
    target = by_key[("method.target_modules", "lora")]
    assert form.parsed_value(target, "all-linear") == "all-linear"
    assert form.parsed_value(target, "q_proj, v_proj") == ["q_proj", "v_proj"]
    assert form.shown_value(target, ["q_proj", "v_proj"]) == "q_proj, v_proj"


@pytest.fixture
def ws(tmp_path) -> Workspace:
    root = tmp_path / "ws"
    root.mkdir()
    write_alpaca(root / "train.jsonl")
    return Workspace(root)


def test_the_queue_is_a_file_and_refuses_bad_configs_at_once(ws, monkeypatch):
    monkeypatch.setattr(actions.runs, "list_runs", lambda *a, **k: [{"name": "busy"}])
    made = actions.enqueue(ws, None, ["data.train=[train.jsonl]"], "first")
    assert made["started"] is None and [e["name"] for e in made["queue"]] == ["first"]
    actions.enqueue(ws, None, ["data.train=[train.jsonl]"], "second")
    assert [e["name"] for e in actions.queued(ws)["queue"]] == ["first", "second"]
    assert json.loads((ws.root / actions.QUEUE).read_text())["queue"][0]["name"] == "first"
    actions.unqueue(ws, 0)
    assert [e["name"] for e in actions.queued(ws)["queue"]] == ["second"]
    with pytest.raises(TunesmithError, match="outside the workspace"):
        actions.enqueue(ws, None, ["data.train=[/etc/passwd]"])
    with pytest.raises(TunesmithError, match="name"):
        actions.enqueue(ws, None, ["data.train=[train.jsonl]"], "bad name")


def test_review_decisions_are_written_line_by_line(ws):
    from tunesmith.data.review import apply_review, write_review_file

    write_review_file(ws.root / "train.jsonl", ws.root / "r.jsonl", 0.5, ["length"])
    counts = actions.review_decide(ws, "r.jsonl", 0, "accept")
    assert counts["accept"] == 1 and counts["undecided"] >= 1
    edited = {"instruction": "What is 0 plus 0?", "input": "", "output": "Zero."}
    actions.review_decide(ws, "r.jsonl", 1, "edit", edited=edited)
    with pytest.raises(TunesmithError, match="reason"):
        actions.review_decide(ws, "r.jsonl", 2, "reject")
    actions.review_decide(ws, "r.jsonl", 2, "reject", "off topic")
    with pytest.raises(TunesmithError, match="does not exist"):
        actions.review_decide(ws, "r.jsonl", 99, "accept")
    summary = apply_review(ws.root / "train.jsonl", ws.root / "r.jsonl", ws.root / "out.jsonl")
    assert (summary["accepted"], summary["modified"], summary["rejected"]) == (1, 1, 1)


def test_convert_stays_in_the_workspace(ws):
    made = actions.convert(ws, "train.jsonl", "conv/train.jsonl", "sharegpt")
    assert made["written"] == 8 and made["output"] == "conv/train.jsonl"
    assert "conversations" in (ws.root / "conv" / "train.jsonl").read_text().splitlines()[0]
    with pytest.raises(TunesmithError, match=r"'\.\.' is not allowed"):
        actions.convert(ws, "train.jsonl", "../x.jsonl", "sharegpt")
    with pytest.raises(TunesmithError, match="unknown target format"):
        actions.convert(ws, "train.jsonl", "y.jsonl", "yaml")


def test_beyond_localhost_needs_auth():
    assert parse_auth(None, "127.0.0.1") is None
    assert parse_auth("me:secret", "0.0.0.0") == ("me", "secret")
    with pytest.raises(TunesmithError, match="give --auth user:pass"):
        parse_auth(None, "0.0.0.0")
    with pytest.raises(TunesmithError, match="user:pass"):
        parse_auth("nopass", "127.0.0.1")


def test_the_app_builds_both_languages_over_a_workspace(ws, tiny_model_dir):
    from fastapi.testclient import TestClient

    from tunesmith.ui.app import create_app

    shutil.copytree(tiny_model_dir, ws.root / "model")
    client = TestClient(create_app(ws, "zh", model="model"))
    assert client.get("/", follow_redirects=False).headers["location"] == "/zh/"
    for lang in ("en", "zh"):
        page = client.get(f"/{lang}/config")
        assert page.status_code == 200
        text = json.dumps(page.json(), ensure_ascii=False)
        assert strings.table(lang)["tab_train"] in text
