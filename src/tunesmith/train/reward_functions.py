"""Reward functions for the online RL stages (grpo, ppo), built from train.<stage>.rewards.

Each function has TRL's reward-function shape, `f(prompts, completions, **columns) -> list`,
one float per completion (None where it cannot score one: TRL leaves it out of the sum).
`completions` are strings or, for chat prompts, `[{"role": "assistant", "content": ...}]`;
`columns` are the prompt records' other fields (`answer`, the reference, above all).

Built-in: exact (the whole answer), numeric (the GSM8K scoring of evaluation/benchmarks.py),
format (a regular expression), length, language, reward_model (a tunesmith rm run) and judge
(an LLM judge through runs/inference.make_client, on the evaluation judge's rubric). Any other
name is a user function by dotted path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import import_module

from tunesmith.config.rl import RewardSpec
from tunesmith.evaluation.benchmarks import extract_number, gold_number
from tunesmith.evaluation.metrics import detect_lang
from tunesmith.utils.errors import ConfigError

RewardFn = Callable[..., list]
NEEDS_ANSWER = ("exact", "numeric")  # built-ins that compare with the record's `answer`


def text_of(completion) -> str:
    """A completion's text, whether TRL hands a string or a list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if m.get("role") == "assistant")


def question_of(prompt) -> str:
    """The last user message of a prompt (or the prompt text)."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def _answers(columns: dict, n: int) -> list:
    answers = columns.get("answer")
    if answers is None:
        raise ConfigError("this reward compares with each prompt's 'answer'; the data has none")
    return list(answers) if len(answers) == n else [None] * n


def _normal(text: str) -> str:
    return " ".join(str(text).split()).casefold()


def exact(prompts, completions, **columns) -> list[float | None]:
    """1.0 when the completion is the answer (whitespace and case aside), else 0.0."""
    answers = _answers(columns, len(completions))
    return [
        None if a is None else float(_normal(text_of(c)) == _normal(a))
        for c, a in zip(completions, answers, strict=True)
    ]


def numeric(prompts, completions, **columns) -> list[float | None]:
    """1.0 when the completion's number (after '####', else its last) is the answer's (after
    '####', else its number): the GSM8K scoring of `tunesmith eval`."""
    answers = _answers(columns, len(completions))
    scores = []
    for c, a in zip(completions, answers, strict=True):
        gold = None if a is None else gold_number(str(a))
        scores.append(None if gold is None else float(extract_number(text_of(c)) == gold))
    return scores


def format_reward(pattern: str) -> RewardFn:
    try:
        compiled = re.compile(pattern, re.DOTALL)
    except re.error as e:
        raise ConfigError(
            f"reward format: pattern {pattern!r} is not a regular expression: {e}"
        ) from None

    def format(prompts, completions, **columns) -> list[float]:
        return [float(compiled.fullmatch(text_of(c).strip()) is not None) for c in completions]

    return format


def length_reward(target: int) -> RewardFn:
    """1.0 up to `target` characters, falling linearly to 0.0 at twice that."""

    def length(prompts, completions, **columns) -> list[float]:
        return [max(0.0, 1.0 - max(0, len(text_of(c)) - target) / target) for c in completions]

    return length


def language_reward(language: str) -> RewardFn:
    """1.0 when the completion is written in `language` (evaluation/metrics.detect_lang)."""

    def lang(prompts, completions, **columns) -> list[float]:
        return [
            float(bool(text_of(c).strip()) and detect_lang([text_of(c)]) == language)
            for c in completions
        ]

    lang.__name__ = "language"
    return lang


def reward_model_reward(run: str) -> RewardFn:
    """The score of a trained rm run (train/reward.RewardScorer) of (prompt, completion)."""
    from tunesmith.train.reward import RewardScorer

    scorer = RewardScorer(run)

    def reward_model(prompts, completions, **columns) -> list[float]:
        return [
            scorer(p if isinstance(p, list) else [{"role": "user", "content": p}], text_of(c))
            for p, c in zip(prompts, completions, strict=True)
        ]

    return reward_model


def judge_reward(spec: str, criteria: str | None) -> RewardFn:
    """An LLM judge's rubric score (evaluation/judge.py, overall 1-10) mapped to 0-1; None for
    a reply the judge's parser cannot read."""
    from tunesmith.evaluation.judge import judge_rubric
    from tunesmith.runs.inference import make_client

    client = make_client(spec)

    def judge(prompts, completions, **columns) -> list[float | None]:
        answers = columns.get("answer") or [None] * len(completions)
        items = [
            {"question": question_of(p), "answer": text_of(c), "reference": criteria or a}
            for p, c, a in zip(prompts, completions, answers, strict=True)
        ]
        rows = judge_rubric(client, items)["items"]
        return [None if r["overall"] is None else (r["overall"] - 1) / 9 for r in rows]

    return judge


def user_function(path: str) -> RewardFn:
    """A function by dotted path: package.module.function or package.module:function."""
    module, sep, name = path.partition(":")
    if not sep:
        module, _, name = path.rpartition(".")
    try:
        function = getattr(import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"reward '{path}': cannot import it ({e})") from None
    if not callable(function):
        raise ConfigError(f"reward '{path}' is not a function")
    return function


def build_reward(spec: RewardSpec) -> RewardFn:
    name = spec.name
    if name == "exact":
        return exact
    if name == "numeric":
        return numeric
    if name == "format":
        return format_reward(spec.pattern)
    if name == "length":
        return length_reward(spec.target)
    if name == "language":
        return language_reward(spec.language)
    if name == "reward_model":
        return reward_model_reward(spec.run)
    if name == "judge":
        return judge_reward(spec.judge, spec.criteria)
    return user_function(name)


def build_rewards(specs: list[RewardSpec]) -> tuple[list[RewardFn], list[float]]:
    """The functions and their weights, in the order the config lists them."""
    return [build_reward(s) for s in specs], [s.weight for s in specs]


def score(
    functions: list[RewardFn], weights: list[float], prompts, completions, **columns
) -> list[float]:
    """The weighted sum of the rewards of each completion (a missing score counts 0): PPO's
    reward, and the demo's held-out measure."""
    total = [0.0] * len(completions)
    for function, weight in zip(functions, weights, strict=True):
        for i, value in enumerate(function(prompts=prompts, completions=completions, **columns)):
            total[i] += weight * (value or 0.0)
    return total
