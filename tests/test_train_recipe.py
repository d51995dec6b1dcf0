"""The one training recipe (train/recipe.py): what it sets up once holds in every stage."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from helpers import run_config, train_run

import tunesmith.train as train_package
from tunesmith.runs.folder import read_jsonl

STAGE_MODULES = {"sft", "pt", "cls", "preference", "reward", "distill", "grpo", "ppo"}


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    records = [
        {"instruction": f"Is {i} a number?", "chosen": "yes", "rejected": "no"} for i in range(8)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def _preference(tmp_path, model_dir, data, stage, *overrides):
    return run_config(
        tmp_path, model_dir, data, stage, f"train.stage={stage}", "train.max_steps=2",
        "data.cutoff_len=64", *overrides,
    )  # fmt: skip


@pytest.mark.parametrize("stage", ["dpo", "orpo", "kto", "rm"])
def test_preference_stages_log_tokens_per_second_and_print_the_plan(
    tmp_path, tiny_model_dir, pairs_file, stage, capsys
):
    # TRL's trainers counted nothing (tokens/s 0): transformers counts input_ids only, and
    # ORPO's batches have none; the plan summary was printed by sft alone
    result = train_run(_preference(tmp_path, tiny_model_dir, pairs_file, stage))
    logged = [m for m in read_jsonl(result.run.metrics_path) if "loss" in m]
    assert len(logged) == 2
    assert all(m["tokens"] > 0 and m["tokens_per_s"] > 0 for m in logged)
    assert logged[1]["tokens"] > logged[0]["tokens"]
    assert "plan: lora trains" in capsys.readouterr().out


@pytest.mark.parametrize("setting", [True, False])
def test_gradient_checkpointing_follows_the_setting_in_a_preference_stage(
    setting, tmp_path, tiny_model_dir, pairs_file, monkeypatch, recwarn
):
    """TRL's configs turn checkpointing on by default; the run follows train.* either way."""
    from tunesmith.models.methods import get_method

    lora = get_method("lora")
    seen = {}
    original = lora.save

    def spy(model, *args):
        seen["checkpointing"] = model.is_activation_checkpointing
        original(model, *args)

    monkeypatch.setattr(lora, "save", spy)
    config = _preference(
        tmp_path, tiny_model_dir, pairs_file, "dpo", f"train.gradient_checkpointing={setting}"
    )
    train_run(config)
    assert seen["checkpointing"] is setting
    # transformers 5's deprecated checkpointing names, called by TRL around each reference pass
    assert [str(w.message) for w in recwarn if issubclass(w.category, FutureWarning)] == []


def test_stages_are_siblings_not_layers():
    """A stage module imports the recipe and shared parts, never another stage."""
    folder = Path(train_package.__file__).parent
    for name in STAGE_MODULES:
        tree = ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))
        imported = {
            node.module.rsplit(".", 1)[-1]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("tunesmith.train.")
        }
        assert not imported & (STAGE_MODULES - {name}), f"train/{name}.py imports {imported}"


def test_the_planner_probes_with_the_levers_of_exactly_the_stages_that_train_with_them():
    from importlib import import_module

    from tunesmith.plan.time import SPEED_STAGES
    from tunesmith.train.recipe import Recipe

    recipes = [
        value
        for module in {m for m, _ in train_package.STAGES.values()}
        for value in vars(import_module(module)).values()
        if isinstance(value, Recipe)
    ]
    assert {r.name for r in recipes if r.speed} == SPEED_STAGES
