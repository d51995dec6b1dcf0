"""The assistant demo's early stages on the embedded SmolLM2-135M-Instruct (slow, runs in CI):
the planner's strategy for the demo budget, and a Chinese persona refused by a model that does
not write Chinese. The whole demo build is the README's path (tunesmith assistant init --demo)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from tunesmith.cli.main import app
from tunesmith.utils.errors import ConfigError
from tunesmith.workflows.assistant.build import build


@pytest.fixture
def demo(tmp_path):
    result = CliRunner().invoke(app, ["assistant", "init", str(tmp_path / "demo"), "--demo"])
    assert result.exit_code == 0, result.output
    return tmp_path / "demo" / "assistant.yaml"


@pytest.mark.slow
def test_demo_plans_a_lora_run_within_its_budget(demo):
    result = build(demo, until="strategy")
    assert [how for _, how in result["stages"]] == ["ran", "ran", "ran"]
    plan = json.loads((demo.parent / "plan.json").read_text("utf-8"))
    requirements = json.loads((demo.parent / "requirements.json").read_text("utf-8"))
    assert plan["method"] == "lora" and "train.learning_rate=1e-3" in plan["overrides"]
    assert plan["estimated_minutes"] <= 20  # the demo's budget.minutes
    assert requirements["qa_records"] == 45 and requirements["documents"] == 3
    assert requirements["chunks"] >= 5  # markdown, HTML and text all read
    # unchanged: skipped
    assert [how for _, how in build(demo, until="strategy")["stages"]] == ["skipped"] * 3


@pytest.mark.slow
def test_smollm2_cannot_take_a_chinese_persona(demo):
    data = yaml.safe_load(demo.read_text("utf-8"))
    data["persona"]["language"] = "zh"
    demo.write_text(yaml.safe_dump(data, allow_unicode=True), "utf-8")
    with pytest.raises(
        ConfigError, match=r"persona\.language: 'zh' needs a model that writes Chinese"
    ):
        build(demo, until="model")
