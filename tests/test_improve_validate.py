"""tunesmith improve train + validate: candidates really trained from the current adapter with
tiny models, each gate rejecting a genuinely worse one (trained on wrong answers), and the
spec's errors naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import build_tiny_llama
from helpers import step_losses, train_tiny

from tunesmith.utils.errors import ConfigError, DataError
from tunesmith.workflows.improve.retrain import retrain
from tunesmith.workflows.improve.spec import load_spec
from tunesmith.workflows.improve.validate import (
    CheckItem,
    load_checks,
    score_answer,
    validate_candidate,
)

CAPITAL = ["What is the capital of France?", "What is the capital?"]
WHO = ["who are you?", "hello, answer briefly please"]
STEPS = ("train.max_steps=150", "train.learning_rate=0.01", "method.r=16", "method.alpha=64")
STEPS += ("method.dropout=0", "train.seed=0")


def write_sft(path: Path, answers: dict[str, str]) -> Path:
    path.write_text(
        "".join(
            json.dumps({"instruction": q, "input": "", "output": a}) + "\n"
            for q, a in answers.items()
        ),
        encoding="utf-8",
    )
    return path


def write_checks(path: Path, prompts: list[str], contains: str) -> Path:
    rows = [{"prompt": p, "contains": [contains], "pattern": contains} for p in prompts]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sharp_tiny_model(folder: Path, tokenizer) -> Path:
    """The shared tiny Llama with a 25x larger output layer: its RMS-normed hidden states
    then reach peaked next-token distributions: a LoRA learns a short answer per question in
    150 steps."""
    import torch

    model = build_tiny_llama(len(tokenizer))
    with torch.no_grad():
        model.lm_head.weight.mul_(25)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def project(root: Path, current: Path, **extra) -> Path:
    """improve.yaml in root: regression = the capital questions (contain Paris)."""
    write_checks(root / "regression.jsonl", CAPITAL, "Paris")
    data = {
        "logs": "logs",
        "current": str(current),
        "regression": "regression.jsonl",
        "work_dir": "work",
        "train": {"overrides": list(STEPS)},
        "validate": {"max_new_tokens": 8, "ab_prompts": 0, "bootstrap": 200},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    (root / "logs").mkdir(exist_ok=True)
    path = root / "improve.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_tokenizer, one_thread):
    """base -> A (every question answered "I am a test.");
    A -> mixed (capital -> "Paris.", who -> "I am a test."), A -> paris (all -> "Paris."),
    A -> again (A's own data once more), all three through improve train (retrain)."""
    tmp = tmp_path_factory.mktemp("improve-validate")
    model = sharp_tiny_model(tmp / "tiny", tiny_tokenizer)
    every = CAPITAL + WHO
    test_data = write_sft(tmp / "test.jsonl", dict.fromkeys(every, "I am a test."))
    train_tiny(tmp, model, test_data, "A", *STEPS)
    a = tmp / "runs" / "A"
    spec, root = load_spec(project(tmp, a))
    out = {"tmp": tmp, "model": model, "A": a}
    datasets = {
        "mixed": {**dict.fromkeys(CAPITAL, "Paris."), **dict.fromkeys(WHO, "I am a test.")},
        "paris": dict.fromkeys(every, "Paris."),
        "again": dict.fromkeys(every, "I am a test."),
    }
    for name, answers in datasets.items():
        candidate = retrain(spec, root, write_sft(tmp / f"{name}.jsonl", answers), name=name)
        out[name] = candidate.run_dir
    return out


def validate(tmp_path: Path, current: Path, candidate: Path, **extra) -> dict:
    spec, root = load_spec(project(tmp_path, current, **extra))
    return validate_candidate(spec, root, candidate, tmp_path / "validation")


def test_retrain_continues_the_current_adapter(runs):
    config = yaml.safe_load((runs["mixed"] / "config.yaml").read_text())
    assert config["method"]["init_adapter"] == str((runs["A"] / "adapter").resolve())
    assert config["data"]["train"] == [str((runs["tmp"] / "mixed.jsonl").resolve())]
    assert runs["mixed"].parent == (runs["tmp"] / "work" / "runs").resolve()
    # "again" trains on A's own data: starting from A's weights, its first loss is far below
    # the first loss A had from the untrained base
    assert step_losses(runs["again"])[0][1] < 0.5 * step_losses(runs["A"])[0][1]


def test_a_better_candidate_passes_every_gate(runs, tmp_path):
    write_checks(tmp_path / "guard.jsonl", WHO, "test")
    result = validate(tmp_path, runs["A"], runs["mixed"], guard="guard.jsonl")
    assert result["decision"] == "approved", result["reasons"]
    full = result["stages"]["full"]
    assert full["current"] == 0 and full["candidate"] == 1 and full["ci95"][0] > 0
    assert full["guard"]["drop"] <= 0.05
    assert (tmp_path / "validation" / "validation.md").read_text().count("| True |") >= 2


def test_quick_check_rejects_a_candidate_trained_on_wrong_answers(runs, tmp_path):
    # production is the mixed run (answers Paris); the candidate continues A (never does)
    result = validate(tmp_path, runs["mixed"], runs["again"])
    quick = result["stages"]["quick"]
    assert result["decision"] == "rejected"
    assert quick["current_pass_rate"] == 1 and quick["candidate_pass_rate"] == 0
    assert "full" not in result["stages"]  # the later, costlier gates did not run
    assert "regression pass rate dropped from 1.00 to 0.00" in result["reasons"][0]
    saved = json.loads((tmp_path / "validation" / "validation.json").read_text())
    assert saved["decision"] == "rejected"


def test_full_evaluation_rejects_a_candidate_that_is_not_better(runs, tmp_path):
    # "again" is A retrained on A's data: the quick check holds (both fail), no gain
    result = validate(tmp_path, runs["A"], runs["again"])
    assert result["stages"]["quick"]["passed"]
    full = result["stages"]["full"]
    assert not full["passed"] and full["gain"] == 0
    assert "does not show the candidate better" in result["reasons"][0]


def test_guard_set_rejects_a_candidate_that_forgot(runs, tmp_path):
    # "paris" fixes the capital questions but now answers Paris to "who are you?" too
    write_checks(tmp_path / "guard.jsonl", WHO, "test")
    result = validate(tmp_path, runs["A"], runs["paris"], guard="guard.jsonl")
    full = result["stages"]["full"]
    assert full["gain"] == 1 and full["ci95"][0] > 0  # better on the evaluation ...
    assert full["guard"]["drop"] == 1 and not full["passed"]  # ... but it forgot
    assert "guard set mean dropped by 1.000" in result["reasons"][0]


def test_replayed_ab_rejects_a_candidate_users_would_like_less(runs, tmp_path):
    """Logged prompts the users corrected ("who are you?" -> a test answer): the candidate
    that answers Paris to everything loses them to the current model under the reference
    judge, although it wins the evaluation set."""
    logs = tmp_path / "logs"
    logs.mkdir()
    requests = [
        {"id": f"r{i}", "status": "ok", "kind": "chat",
         "messages": [{"role": "user", "content": q}], "response": "x"}
        for i, q in enumerate(WHO)
    ]  # fmt: skip
    requests.append({"id": "bad", "status": "error", "kind": "chat", "messages": []})
    feedback = [
        {"response_id": f"r{i}", "rating": -1, "correction": "I am a test."} for i in (0, 1)
    ]
    (logs / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    (logs / "feedback.jsonl").write_text("".join(json.dumps(r) + "\n" for r in feedback))
    result = validate(tmp_path, runs["A"], runs["paris"], validate={"ab_prompts": 10})
    ab = result["stages"]["ab"]
    assert result["stages"]["full"]["passed"]
    assert ab["judge"] == "reference" and ab["judged"] == 2
    assert ab["current_wins"] == 2 and ab["win_rate"] == 0 and not ab["passed"]
    assert ab["log_lines_left_out"] == 1  # the failed request, with its reason
    assert "not a successful chat request" in (tmp_path / "validation/ab_rejects.jsonl").read_text()
    assert result["decision"] == "rejected"


def test_score_answer_rules():
    item = CheckItem([{"role": "user", "content": "q"}], contains=["Paris", "France"])
    assert score_answer(item, "paris is in FRANCE") == (1.0, True)
    assert score_answer(item, "Paris") == (0.5, False)
    ref = CheckItem([{"role": "user", "content": "q"}], expected="the store opens at nine")
    assert score_answer(ref, "the store opens at nine")[1]
    assert not score_answer(ref, "closed", pass_rouge=0.5)[1]


def test_check_file_errors_name_the_line(tmp_path):
    path = tmp_path / "checks.jsonl"
    path.write_text('{"prompt": "a", "expected": "b"}\n{"prompt": "c"}\n')
    with pytest.raises(DataError, match=r"checks.jsonl:2: needs 'expected'"):
        load_checks(path)
    path.write_text('{"messages": [{"role": "assistant", "content": "x"}], "expected": "b"}\n')
    with pytest.raises(DataError, match="ending with a user turn"):
        load_checks(path)


def test_improve_file_errors_name_the_key(tmp_path):
    path = tmp_path / "improve.yaml"
    path.write_text("logs: l\ncurrent: c\nregression: r\nvalidate: {quik_size: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'validate.quik_size' \(did you mean"):
        load_spec(path)
    path.write_text("logs: l\ncurrent: c\nregression: r\nserver: {url: localhost:8000}\n")
    with pytest.raises(ConfigError, match=r"server\.url"):
        load_spec(path)
    path.write_text("logs: l\nregression: r\n")
    with pytest.raises(ConfigError, match="current"):
        load_spec(path)


def test_init_adapter_must_be_a_saved_adapter(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from tunesmith.models.methods.lora import continue_adapter

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    message = r"method\.init_adapter: .* is not a saved adapter folder \(no adapter_config\.json\)"
    with pytest.raises(ConfigError, match=message):
        continue_adapter(model, str(tmp_path))


def test_the_planner_counts_a_continued_adapter_without_loading_it(tmp_path, tiny_model_dir):
    """The planner's meta model takes the saved adapter's shapes (its own rank and targets),
    with no weight loaded into meta tensors (torch warned once per tensor)."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunesmith.config.methods import LoraMethod
    from tunesmith.plan.count import meta_model, trainable_parameters

    saved = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    saved.save_pretrained(tmp_path / "adapter")
    expected = sum(p.numel() for p in saved.parameters() if p.requires_grad)
    method = LoraMethod(r=16, init_adapter=str(tmp_path / "adapter"))  # r: the adapter's own
    model = meta_model(AutoConfig.from_pretrained(tiny_model_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counted = trainable_parameters(model, method)
    assert counted == expected
