"""Stage ppo on the tiny Llama: GAE by hand, the reward rising, KL 0 at the start, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import run_config, train_run

from tunesmith.train import reward_functions as rf
from tunesmith.train.ppo import gae
from tunesmith.utils.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def digit_share(prompts, completions, **columns) -> list[float]:
    texts = [rf.text_of(c) for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    records = [{"prompt": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(8)]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def _ppo(tmp_path, model_dir, data, name, *overrides):
    return run_config(
        tmp_path,
        model_dir,
        data,
        name,
        "train.stage=ppo",
        "method.type=full",
        "train.learning_rate=1e-2",
        "train.batch_size=8",
        "train.ppo.max_completion_length=8",
        "train.ppo.rewards=[{name: test_ppo.digit_share}]",
        *overrides,
    )


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [m for m in map(json.loads, lines) if "loss" in m]


def test_gae_matches_the_recursion_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.2, 0.1, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the 4th token is past the end
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    d2 = 1.0 - 0.1
    d1 = 0.0 + 0.9 * 0.1 - 0.2
    d0 = 0.0 + 0.9 * 0.2 - 0.5
    a2, a1 = d2, d1 + 0.45 * d2
    expected = torch.tensor([[d0 + 0.45 * a1, a1, a2, 0.0]])
    assert torch.allclose(advantages, expected)
    assert torch.allclose(returns[:, :3], (expected + values)[:, :3])


def test_ppo_reward_rises_kl_starts_at_zero_and_metrics_hold_it(
    tmp_path, tiny_model_dir, prompts_file, matrix_cell
):
    config = _ppo(
        tmp_path,
        tiny_model_dir,
        prompts_file,
        "ppo",
        "train.max_steps=25",
        "train.ppo.ppo_epochs=4",
    )
    result = train_run(config)
    steps = _metrics(result.run.root)
    assert len(steps) == 25
    assert set(("reward", "kl", "entropy", "policy_loss", "value_loss")) <= set(steps[0])
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is its reference at first
    assert steps[-1]["kl"] != 0
    rewards = [m["reward"] for m in steps]
    assert sum(rewards[-5:]) > 2 * sum(rewards[:5]), rewards  # 0.024 -> 0.065 at seed 42
    summary = json.loads((result.run.root / "summary.json").read_text())
    assert summary["stage"] == "ppo" and summary["rewards"]["train"]["last"]["reward"] > 0
    matrix_cell("full", "trains", "yes", stage="ppo")


def test_ppo_with_lora_uses_the_adapter_off_as_reference(
    tmp_path, tiny_model_dir, prompts_file, matrix_cell
):
    config = _ppo(
        tmp_path, tiny_model_dir, prompts_file, "lora", "method.type=lora", "train.max_steps=2"
    )
    result = train_run(config)
    steps = _metrics(result.run.root)
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert (result.run.root / "adapter" / "adapter_model.safetensors").is_file()
    matrix_cell("lora", "trains", "yes", stage="ppo")


def test_ppo_resume_continues_the_uninterrupted_run(
    tmp_path, tiny_model_dir, prompts_file, matrix_cell
):
    whole = train_run(_ppo(tmp_path, tiny_model_dir, prompts_file, "whole", "train.max_steps=4"))
    first = _ppo(
        tmp_path, tiny_model_dir, prompts_file, "parts", "train.max_steps=2", "train.save_steps=2"
    )
    train_run(first)
    assert (tmp_path / "runs/parts/checkpoints/checkpoint-2/value_head.safetensors").is_file()
    config = _ppo(tmp_path, tiny_model_dir, prompts_file, "parts", "train.max_steps=4")
    resumed = train_run(config, resume=True)
    assert resumed.summary["steps"] == 4 and resumed.summary["resumed_from"]
    a, b = _metrics(whole.run.root), _metrics(resumed.run.root)
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    for x, y in zip(a, b, strict=True):
        assert x["reward"] == pytest.approx(y["reward"]) and x["loss"] == pytest.approx(y["loss"])
        assert x["value_loss"] == pytest.approx(y["value_loss"])
    matrix_cell("full", "resumes", "yes", stage="ppo")


def test_ppo_starts_from_an_sft_run(tmp_path, tiny_model_dir, prompts_file, alpaca_file):
    sft = train_run(run_config(tmp_path, tiny_model_dir, alpaca_file, "sft", "train.max_steps=2"))
    config = _ppo(
        tmp_path,
        tiny_model_dir,
        prompts_file,
        "from-sft",
        f"train.ppo.policy={sft.run.root}",
        "method.type=lora",
        "train.max_steps=1",
    )
    result = train_run(config)
    assert result.summary["model"] == str(sft.run.root)


def test_ppo_refuses_accumulation_and_a_missing_section(tmp_path, tiny_model_dir):
    from tunesmith.train.ppo import PPO
    from tunesmith.train.recipe import check

    config = _ppo(tmp_path, tiny_model_dir, "p.jsonl", "x", "train.gradient_accumulation_steps=2")
    with pytest.raises(ConfigError, match="one rollout per step"):
        check(PPO, config)
    config = run_config(tmp_path, tiny_model_dir, "p.jsonl", "x", "train.stage=ppo")
    with pytest.raises(ConfigError, match=r"train\.ppo: stage ppo needs its reward"):
        check(PPO, config)


def test_ppo_reward_from_a_reward_model_run(tmp_path, tiny_model_dir, prompts_file):
    pairs = tmp_path / "pairs.jsonl"
    records = [
        {"instruction": f"Is {i} a number?", "chosen": "yes", "rejected": "no"} for i in range(4)
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    rm = train_run(
        run_config(tmp_path, tiny_model_dir, pairs, "rm", "train.stage=rm", "train.max_steps=2")
    )
    config = _ppo(
        tmp_path,
        tiny_model_dir,
        prompts_file,
        "rm-reward",
        "method.type=lora",
        "train.max_steps=2",
        f"train.ppo.rewards=[{{name: reward_model, run: {rm.run.root}}}]",
    )
    steps = _metrics(train_run(config).run.root)
    assert all(isinstance(m["reward"], float) and m["reward"] == m["reward"] for m in steps)
    assert len({m["reward"] for m in steps}) == 2  # scored per rollout, not a constant
