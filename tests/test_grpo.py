"""Stage grpo on the tiny Llama: built-in rewards, the reward rising, metrics, resume, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_config, train_run

from tunesmith.config.load import load_config
from tunesmith.config.rl import RewardSpec
from tunesmith.data.prompts import read_prompts
from tunesmith.train import reward_functions as rf
from tunesmith.utils.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def digit_share(prompts, completions, **columns) -> list[float]:
    """A reward the tiny model can learn in a few steps: the share of digits it writes."""
    texts = [rf.text_of(c) for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    records = [{"question": f"What is {i} plus {i}?", "answer": f"#### {2 * i}"} for i in range(8)]
    return write_jsonl(tmp_path / "prompts.jsonl", records)


def _grpo(tmp_path, model_dir, data, name, *overrides):
    return run_config(
        tmp_path,
        model_dir,
        data,
        name,
        "train.stage=grpo",
        "method.type=full",
        "train.learning_rate=1e-2",
        "train.batch_size=8",
        "train.grpo.num_generations=4",
        "train.grpo.max_completion_length=8",
        "train.grpo.rewards=[{name: test_grpo.digit_share}]",
        *overrides,
    )


# --- reward functions ------------------------------------------------------------------


def test_numeric_reward_is_the_gsm8k_scoring():
    completions = ["6 * 7 = 42, so #### 42", "The answer is 41.", "no number", "1,234"]
    answers = ["#### 42", "#### 42", "#### 42", "1234"]
    assert rf.numeric(None, completions, answer=answers) == [1.0, 0.0, 0.0, 1.0]
    chat = [[{"role": "assistant", "content": "It is 42"}]]
    assert rf.numeric(None, chat, answer=["The answer: #### 42"]) == [1.0]


def test_exact_format_length_and_language_rewards():
    assert rf.exact(None, ["  Paris ", "paris.", "PARIS"], answer=["Paris"] * 3) == [1, 0, 1]
    fmt = rf.build_reward(RewardSpec(name="format", pattern=r"<think>.*</think>\s*\d+"))
    assert fmt(None, ["<think>a\nb</think> 42", "42"]) == [1.0, 0.0]
    length = rf.build_reward(RewardSpec(name="length", target=10))
    assert length(None, ["short", "x" * 15, "x" * 30]) == [1.0, 0.5, 0.0]
    zh = rf.build_reward(RewardSpec(name="language", language="zh"))
    assert zh(None, ["你好，世界", "hello world", ""]) == [1.0, 0.0, 0.0]


def test_rewards_sum_with_their_weights_and_a_missing_score_counts_zero():
    functions, weights = rf.build_rewards(
        [RewardSpec(name="numeric", weight=2.0), RewardSpec(name="length", target=4)]
    )
    total = rf.score(functions, weights, None, ["7", "8 eight"], answer=["7", None])
    assert total == [3.0, pytest.approx(0.25)]


def test_judge_reward_maps_the_rubric_to_zero_one(monkeypatch):
    class Judge:
        def chat(self, conversations, max_new_tokens=256, temperature=0.0):
            return ['{"accuracy": 10, "completeness": 10, "fluency": 10, "relevance": 10}', "??"]

    monkeypatch.setattr("tunesmith.runs.inference.make_client", lambda spec: Judge())
    judge = rf.build_reward(RewardSpec(name="judge", judge="http://x/v1", criteria="be right"))
    prompts = [[{"role": "user", "content": "q"}]] * 2
    assert judge(prompts, ["a", "b"]) == [1.0, None]


def test_bad_reward_settings_are_one_sentence_naming_the_key():
    with pytest.raises(ConfigError, match="unknown reward 'exactly'"):
        load_config(None, ["train.stage=grpo", "train.grpo.rewards=[{name: exactly}]"])
    with pytest.raises(ConfigError, match="reward 'format' needs 'pattern'"):
        load_config(None, ["train.stage=grpo", "train.grpo.rewards=[{name: format}]"])
    with pytest.raises(ConfigError, match="'target' does not apply to reward 'numeric'"):
        load_config(None, ["train.grpo.rewards=[{name: numeric, target: 3}]"])
    with pytest.raises(ConfigError, match="cannot import"):
        rf.build_reward(RewardSpec(name="no_such_module.fn"))
    with pytest.raises(ConfigError, match="not a regular expression"):
        rf.build_reward(RewardSpec(name="format", pattern="("))


# --- prompt data -----------------------------------------------------------------------


def test_prompt_records_of_every_layout_and_rejects(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "Say 1", "answer": 1, "level": "easy"},
            {"question": "Say 2", "answer": "#### 2"},
            {"instruction": "Say", "input": "3", "output": "3"},
            {"messages": [{"role": "user", "content": "Say 4"}]},
            {"conversations": [{"from": "human", "value": "Say 5"}, {"from": "gpt", "value": "5"}]},
            {"prompt": [{"role": "assistant", "content": "no user"}]},
        ],
    )
    rejected = []
    rows, stats = read_prompts([path], "skip", lambda rec, why: rejected.append((rec.line, why)))
    assert [(r["prompt"][-1]["content"], r["answer"]) for r in rows] == [
        ("Say 1", "1"),
        ("Say 2", "#### 2"),
        ("Say\n3", "3"),
        ("Say 4", None),
        ("Say 5", "5"),
    ]
    assert rows[0]["level"] == "easy"
    assert stats == {"read": 6, "kept": 5, "rejected": 1}
    assert rejected == [(6, "field 'prompt' must end with a user message")]
    with pytest.raises(DataError, match=r"p.jsonl:6: field 'prompt' must end"):
        read_prompts([path])


# --- training --------------------------------------------------------------------------


def test_grpo_reward_rises_and_metrics_hold_reward_kl_entropy(
    tmp_path, tiny_model_dir, prompts_file, matrix_cell
):
    config = _grpo(
        tmp_path, tiny_model_dir, prompts_file, "grpo", "train.max_steps=30", "train.grpo.beta=0.04"
    )
    result = train_run(config)
    metrics = [json.loads(line) for line in (result.run.root / "metrics.jsonl").open()]
    steps = [m for m in metrics if "loss" in m]
    assert len(steps) == 30
    assert {"reward", "reward_std", "kl", "entropy", "rewards/digit_share/mean"} <= set(steps[0])
    rewards = [m["reward"] for m in steps]
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.1, rewards
    assert steps[-1]["kl"] > 0  # the policy moved away from the reference
    summary = json.loads((result.run.root / "summary.json").read_text())
    assert summary["stage"] == "grpo" and summary["rewards"]["train"]["last"]["reward"] > 0
    assert (result.run.root / "plots" / "rewards.png").stat().st_size > 0
    matrix_cell("full", "trains", "yes", stage="grpo")


def test_grpo_resume_continues_the_uninterrupted_run(
    tmp_path, tiny_model_dir, prompts_file, matrix_cell
):
    whole = train_run(_grpo(tmp_path, tiny_model_dir, prompts_file, "whole", "train.max_steps=4"))
    first = _grpo(
        tmp_path, tiny_model_dir, prompts_file, "parts", "train.max_steps=2", "train.save_steps=2"
    )
    train_run(first)
    resumed = train_run(
        _grpo(tmp_path, tiny_model_dir, prompts_file, "parts", "train.max_steps=4"), resume=True
    )
    assert resumed.summary["steps"] == 4 and resumed.summary["resumed_from"]

    def losses(run):
        lines = (run.run.root / "metrics.jsonl").read_text().splitlines()
        return [(m["step"], m["loss"], m["reward"]) for m in map(json.loads, lines) if "loss" in m]

    assert [s for s, _, _ in losses(resumed)] == [1, 2, 3, 4]
    for (_, loss_a, reward_a), (_, loss_b, reward_b) in zip(
        losses(whole), losses(resumed), strict=True
    ):
        assert reward_a == pytest.approx(reward_b) and loss_a == pytest.approx(loss_b, abs=1e-6)
    matrix_cell("full", "resumes", "yes", stage="grpo")


def test_grpo_refuses_groups_split_across_steps_and_vllm_without_cuda(tmp_path, tiny_model_dir):
    from tunesmith.train.grpo import GRPO
    from tunesmith.train.recipe import check

    config = _grpo(tmp_path, tiny_model_dir, "p.jsonl", "x", "train.batch_size=6")
    with pytest.raises(ConfigError, match=r"\(6\) must be a multiple of train.grpo.num_gen"):
        check(GRPO, config)
    config = _grpo(tmp_path, tiny_model_dir, "p.jsonl", "x", "train.grpo.vllm=true")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="vLLM generation needs a CUDA GPU"):
            check(GRPO, config)


def test_grpo_without_its_section_says_what_to_add(tmp_path, tiny_model_dir):
    from tunesmith.train.grpo import GRPO
    from tunesmith.train.recipe import check

    config = run_config(tmp_path, tiny_model_dir, "p.jsonl", "x", "train.stage=grpo")
    with pytest.raises(ConfigError, match=r"train.grpo: stage grpo needs its reward functions"):
        check(GRPO, config)


def test_grpo_measures_held_out_rewards_before_and_after(tmp_path, tiny_model_dir, prompts_file):
    config = _grpo(
        tmp_path,
        tiny_model_dir,
        prompts_file,
        "held",
        "train.max_steps=2",
        f"data.eval=[{prompts_file}]",
    )
    rewards = train_run(config).summary["rewards"]
    assert set(rewards) == {"train", "held_out_before", "held_out_after"}
    assert 0 <= rewards["held_out_before"]["reward"] <= 1
    assert "kl" not in rewards["held_out_before"] or rewards["held_out_before"]["kl"] == 0
