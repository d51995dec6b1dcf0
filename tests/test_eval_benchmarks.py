"""Benchmarks: log-likelihood choice scoring, answer extraction, few-shot prompts, the sample."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tunesmith.evaluation import benchmarks as bm
from tunesmith.evaluation.benchmarks import (
    ChoiceItem,
    NumericItem,
    continuation_logprobs,
    extract_choice,
    extract_number,
    few_shot_prompt,
    gold_number,
    load_benchmark,
    run_benchmark,
    split_shots,
)
from tunesmith.models.engine import Completion
from tunesmith.utils.errors import ConfigError, DataError, ModelError

FOUR = ["Paris", "London", "Berlin", "Rome"]


def _write(path, records) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("The answer is (C).", 2),
        ("答案是B", 1),
        ("正确答案为：C。", 2),
        ("我选D", 3),
        ("**B**", 1),
        ("After thinking: **(D)** is right", 3),
        ("A good question! The answer is D.", 3),  # the article 'A' is not the answer
        ("answer: A", 0),
        ("The answer is a bit unclear, maybe C", 2),
        ("A good question! I think D.", 3),
        ("B. London", 1),
        ("（Ｃ）", 2),  # full-width brackets and letter
        ("It must be Berlin.", 2),  # the choice's text, no letter
        ("Either A or B.", None),
        ("I am not sure.", None),
        ("E", None),  # not one of four choices
    ],
)
def test_extract_choice_from_messy_replies(output, expected):
    assert extract_choice(output, FOUR) == expected


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("She has 3 apples, buys 5 more: 3 + 5 = 8. So the answer is 8.", "8"),
        ("Total cost: $1,234.50", "1234.5"),
        ("#### 42\nCheck: 6 * 7", "42"),  # the marked answer, not the last number
        ("It drops to -3.0 degrees", "-3"),
        ("no idea", None),
    ],
)
def test_extract_number(output, expected):
    assert extract_number(output) == expected


def test_gold_number_reads_the_gsm8k_marker():
    assert gold_number("48/2 = <<48/2=24>>24 clips in May.\n#### 1,072") == "1072"
    assert gold_number("72") == "72"


def test_loglik_picks_best_sum_and_best_mean_per_token(tmp_path):
    # " x": one token at -2.0; " y z w": three tokens at -3.0 in all (-1.0 each).
    fake = {" x": (-2.0, 1), " y z w": (-3.0, 3)}
    source = _write(
        tmp_path / "mc.jsonl",
        [
            {"question": "q1", "choices": ["x", "y z w"], "answer": "A"},
            {"question": "q2", "choices": ["y z w", "x"], "answer": 0},
        ],
    )

    def scorer(pairs):
        assert all(ctx.endswith("Answer:") for ctx, _ in pairs)
        return [fake[cont] for _, cont in pairs]

    out = run_benchmark(None, source, scorer=scorer)
    assert [r["chosen"] for r in out["results"]] == ["A", "B"]  # sum prefers "x"
    assert [r["chosen_norm"] for r in out["results"]] == ["B", "A"]  # mean prefers "y z w"
    assert (out["accuracy"], out["accuracy_norm"]) == (0.5, 0.5)
    assert [r["correct"] for r in out["results"]] == [1, 0]


def _direct_logprob(model, tokenizer, context: str, continuation: str) -> float:
    ctx = tokenizer(context)["input_ids"]
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(float(logprobs[len(ctx) + k - 1, t]) for k, t in enumerate(cont))


def test_batched_loglik_equals_direct_computation_and_drives_the_choice(
    tiny_model_dir, tiny_tokenizer, tmp_path
):
    from transformers import AutoModelForCausalLM

    from tunesmith.models.engine import TransformersEngine

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    pairs = [
        ("What is the capital of France?\nAnswer:", " Paris"),
        ("hi", " a much longer continuation of several tokens"),
        ("你好，我是一个测试助手。", " 你好"),
    ]
    got = continuation_logprobs(model, tiny_tokenizer, pairs, batch_size=2)
    for (context, continuation), (value, n) in zip(pairs, got, strict=True):
        assert value == pytest.approx(_direct_logprob(model, tiny_tokenizer, context, continuation))
        assert n == len(tiny_tokenizer(continuation, add_special_tokens=False)["input_ids"])
    item = {"question": "What is the capital of France?", "choices": FOUR, "answer": "A"}
    out = run_benchmark(
        TransformersEngine(model, tiny_tokenizer), _write(tmp_path / "a.jsonl", [item])
    )
    prompt = few_shot_prompt(load_benchmark(tmp_path / "a.jsonl")[0], [], options=False)
    direct = [_direct_logprob(model, tiny_tokenizer, prompt, f" {c}") for c in FOUR]
    assert out["results"][0]["chosen"] == "ABCD"[direct.index(max(direct))]


def test_few_shot_examples_come_first_and_are_not_scored():
    items = load_benchmark("sample")
    examples, scored = split_shots(items, 2)
    assert [e.id for e in examples] == [items[0].id, items[1].id]
    assert {e.id for e in examples}.isdisjoint(s.id for s in scored)
    assert len(scored) == len(items) - 2
    target = scored[0]
    prompt = few_shot_prompt(target, examples)
    assert prompt.count(target.question) == 1 and prompt.endswith("Answer:")
    assert all(e.question in prompt for e in examples)
    assert f"Answer: {'ABCD'[examples[0].answer]}\n" in prompt  # examples carry their answers
    assert prompt.index(examples[1].question) < prompt.index(target.question)
    cloze = few_shot_prompt(target, examples, options=False)  # log-likelihood form
    first = examples[0]
    assert f"{first.question}\nAnswer: {first.choices[first.answer]}" in cloze
    assert cloze.endswith(f"{target.question}\nAnswer:") and "A. " not in cloze
    # A dev split supplies the examples; then every item is scored.
    examples, scored = split_shots(items[2:], 2, dev=items[:2])
    assert len(scored) == len(items) - 2 and examples == items[:2]
    with pytest.raises(ConfigError, match="shots=40"):
        split_shots(items, 40)


def test_shipped_sample_loads_with_unique_ids_and_both_languages():
    items = load_benchmark("sample")
    assert 25 <= len(items) <= 40
    assert len({it.id for it in items}) == len(items)
    assert all(isinstance(it, ChoiceItem) and 0 <= it.answer < 4 for it in items)
    assert any(bm._is_chinese(it.question) for it in items)
    assert sum(not bm._is_chinese(it.question) for it in items) >= 15
    # The `choices` + index layout reads like the A-D + letter layout.
    en04 = next(it for it in items if it.id == "en-04")
    assert en04.choices[en04.answer] == "William Shakespeare"


def test_generate_mode_extracts_answers_and_counts_unparsed(tmp_path):
    source = _write(
        tmp_path / "mixed.jsonl",
        [
            {"id": "m1", "question": "Capital of France?", "choices": FOUR, "answer": "A"},
            {"id": "g1", "question": "2 + 3 * 4?", "answer": "3 * 4 = 12, 2 + 12 = 14\n#### 14"},
            {"id": "m2", "Question": "法国首都？", "A": "巴黎", "B": "伦敦", "Answer": "B"},
        ],
    )
    canned = {"Capital": "The answer is **A**", "法国": "不知道", "2 + 3": "So 2 + 12 = 14."}

    class Engine:
        def generate(self, conversations, params):
            texts = [
                next(v for k, v in canned.items() if k in c[-1]["content"]) for c in conversations
            ]
            return [Completion(t, "stop", 1, 1) for t in texts]

    out = run_benchmark(Engine(), source, mode="generate")
    assert [(r["id"], r["chosen"], r["correct"]) for r in out["results"]] == [
        ("m1", "A", 1),
        ("g1", "14", 1),
        ("m2", None, 0),
    ]
    assert out["accuracy"] == pytest.approx(2 / 3) and out["unparsed"] == 1


def test_bad_records_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    _write(path, [{"question": "q", "A": "1", "B": "2", "C": "3", "D": "4", "answer": "E"}])
    with pytest.raises(DataError, match=r"bad.jsonl:1: answer 'E' is not one of the choices"):
        load_benchmark(path)
    _write(path, [{"question": "q", "answer": "no number here"}])
    with pytest.raises(DataError, match=r"bad.jsonl:1: no choices"):
        load_benchmark(path)
    with pytest.raises(DataError, match="no such file"):
        load_benchmark(tmp_path / "missing.csv")


def test_hub_dataset_offline_is_one_clear_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub\nlong traceback text")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="could not be loaded from the Hugging Face Hub") as info:
        load_benchmark("cais/mmlu:abstract_algebra")
    assert "\n" not in str(info.value)


def test_loglik_needs_a_transformers_model_and_lm_eval_is_guarded():
    class NoModel:
        tokenizer = None

    with pytest.raises(ConfigError, match="mode=generate"):
        run_benchmark(NoModel(), "sample", mode="loglik")
    if importlib.util.find_spec("lm_eval") is None:
        with pytest.raises(ModelError, match="pip install lm-eval"):
            bm.run_lm_eval("some/model", ["mmlu"])


def test_numeric_item_parses_gold():
    item = bm.parse_item({"question": "q", "answer": "x\n#### 3,000"}, "f.jsonl:1")
    assert isinstance(item, NumericItem) and item.answer == "3000"
