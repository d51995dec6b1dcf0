"""`inspect` as a library (tunesmith.data.quality.analyze): exact counts on planted problems."""

from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path

import pytest

from tunesmith.data.quality.analyze import inspect_data, marked, write_inspect_report
from tunesmith.data.quality.rules import QualityRules
from tunesmith.data.render import tokenize_conversation
from tunesmith.utils.errors import DataError

HASH = "A hash table stores key-value pairs in an array and uses a hash function to pick the slot "
HASH += "for each key, so lookups take constant time on average."
WATER = (
    "Water evaporates from oceans and lakes, condenses into clouds, falls back as rain or snow, "
)
WATER += "and flows through rivers and ground water back to the sea, where the cycle starts again."
LONG = "Rivers shape valleys and carry water to the sea. " * 250  # 12,250 characters

# train.jsonl, one entry per line; the comments say what each plants.
TRAIN = [
    {"instruction": "Explain what a hash table is.", "output": HASH},  # 1: A
    {
        "instruction": "Describe the water cycle.",
        "input": "Keep it short.",
        "output": WATER,
    },  # 2: B
    {
        "instruction": "Why is the sky blue?",
        "output": "Sunlight scatters off the molecules of the air, and blue light, with its short "
        "wavelength, scatters far more than red light, so the whole sky glows blue.",
    },
    {"instruction": "Explain what a hash table is.", "output": HASH},  # 4: exact copy of A
    {
        "instruction": "Give me a contact.",
        "output": "You can reach our support desk at 13812345678 or by mail at help@example.com "
        "during office hours.",
    },  # 5: PII
    "{not json",  # 6: malformed line
    {
        "instruction": "Describe the water cycle.",
        "input": "Keep it short.",
        "output": WATER.replace("oceans and lakes", "oceans and seas"),
    },  # 7: near duplicate of B
    {"instruction": "Say hi.", "output": ""},  # 8: empty field -> malformed
    {"instruction": "explain what a HASH table is.", "output": "  " + HASH},  # 9: copy of A
    {"instruction": "Write a very long essay about rivers.", "output": LONG},  # 10: too long
    {
        "instruction": "What does BEL mean?",
        "output": "It is the bell character \x07 of a terminal.",
    },
    {"instruction": "Hi", "output": "Hello there, how can I help you today?"},  # 12: short prompt
]
CHAT = [
    {
        "system": "You are a helpful assistant.",
        "conversations": [
            {"from": "human", "value": "你好，请介绍一下你自己。"},
            {"from": "gpt", "value": "你好！我是一个乐于助人的助手，可以回答各种问题。"},
            {"from": "human", "value": "你能做什么？"},
            {"from": "gpt", "value": "我可以解释概念、写代码、翻译文本，还能帮你整理思路。"},
        ],
    },
    {
        "conversations": [
            {"from": "human", "value": "Tell me a joke about cats."},
            {"from": "gpt", "value": "Why did the cat sit on the computer? To watch the mouse!"},
        ]
    },
]


def write_jsonl(path, rows) -> str:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def planted(tmp_path) -> list[str]:
    return [
        write_jsonl(tmp_path / "train.jsonl", TRAIN),
        write_jsonl(tmp_path / "chat.jsonl", CHAT),
    ]


@pytest.fixture
def report(planted) -> dict:
    return inspect_data(planted, preview=2)


def test_counts_formats_and_malformed_records(report, planted):
    assert report["records"] == {"read": 14, "valid": 12, "malformed": 2}
    assert [(f["path"], f["format"], f["records"], f["malformed"]) for f in report["files"]] == [
        (planted[0], "alpaca", 12, 2),
        (planted[1], "sharegpt", 2, 0),
    ]
    bad = report["malformed"]
    assert bad["count"] == 2
    assert [e["where"] for e in bad["examples"]] == [f"{planted[0]}:6", f"{planted[0]}:8"]
    assert bad["examples"][0]["reason"].startswith("invalid JSON")
    assert "'output' is missing or empty" in bad["examples"][1]["reason"]


def test_field_completeness_per_file_counts_empty_and_missing(report, planted):
    train, chat = report["fields"][planted[0]], report["fields"][planted[1]]
    # 11 JSON objects in train.jsonl (the bad line is not one)
    assert train["output"] == {"non_empty": 10, "empty": 1, "missing": 0, "completeness": 0.9091}
    assert train["input"] == {"non_empty": 2, "empty": 0, "missing": 9, "completeness": 0.1818}
    assert list(chat) == ["system", "conversations"]
    assert chat["system"] == {"non_empty": 1, "empty": 0, "missing": 1, "completeness": 0.5}


def test_duplicates_exact_then_near(report, planted):
    exact, near = report["duplicates"]["exact"], report["duplicates"]["near"]
    assert (exact["clusters"], exact["records"], exact["redundant"]) == (1, 3, 2)
    assert [e["where"] for e in exact["examples"][0]] == [f"{planted[0]}:{n}" for n in (1, 4, 9)]
    assert (near["clusters"], near["records"], near["redundant"]) == (1, 2, 1)
    assert [e["where"] for e in near["examples"][0]] == [f"{planted[0]}:2", f"{planted[0]}:7"]
    assert near["examples"][0][0]["text"].endswith("...")  # examples are clipped


def test_text_checks_pii_control_languages_and_turns(report, planted):
    assert report["pii"]["records"] == 1
    assert report["pii"]["by_kind"] == {"cn_mobile": 1, "email": 1}
    assert report["pii"]["examples"] == [
        {"where": f"{planted[0]}:5", "kinds": {"cn_mobile": 1, "email": 1}}
    ]
    assert "13812345678" not in json.dumps(report)  # the report never repeats the PII itself
    assert report["control_chars"] == {"records": 1, "chars": 1}
    assert report["languages"] == {"en": 11, "zh": 1}
    assert report["turns"] == {
        "conversations": 12,
        "histogram": {"1": 11, "2": 1},
        "multi_turn": 1,
        "system_share": 0.0833,
    }
    assert report["labels"] is None


def test_lengths_in_characters(report):
    response = report["lengths"]["chars"]["response"]
    assert response["max"] == len(LONG)
    assert response["min"] == len("Hello there, how can I help you today?")
    assert report["lengths"]["tokens"] is None and report["truncation"] is None


def test_scores_pass_rate_and_overall_quality(report):
    scores = report["scores"]
    assert (scores["passed"], scores["failed"], scores["pass_rate"]) == (10, 2, 0.8333)
    assert {code: e["count"] for code, e in scores["issues"].items()} == {
        "pii": 1,
        "response_too_long": 1,
        "control_chars": 1,
        "prompt_too_short": 1,
    }
    mean = (8 * 100 + 75 + 80 + 85 + 70) / 12
    quality = report["quality"]
    assert quality["mean_record_score"] == pytest.approx(mean, abs=1e-4)
    points = {d["reason"]: d["points"] for d in quality["deductions"]}
    assert points == pytest.approx(
        {
            "exact-duplicate copies": 50 * 2 / 12,
            "near duplicates": 25 * 1 / 12,
            "malformed records": 100 * 2 / 14,
        },
        abs=0.01,
    )
    assert quality["overall"] == pytest.approx(mean - sum(points.values()), abs=0.01)
    assert report["quality_score"] == quality["overall"]
    assert sum(report["histograms"]["scores"]["counts"]) == 12


def test_dataset_deductions_are_configurable(planted):
    rules = QualityRules(duplicate_weight=0, near_duplicate_weight=0, malformed_weight=0)
    quality = inspect_data(planted, rules=rules, preview=0)["quality"]
    assert quality["deductions"] == []
    assert quality["overall"] == quality["mean_record_score"]


def test_recommendations_name_each_planted_problem(report, planted):
    advice = "\n".join(report["recommendations"])
    assert f"2 malformed record(s), first at {planted[0]}:6" in advice
    assert "3 exact-duplicate records in 1 cluster(s) (2 redundant copies)" in advice
    assert "2 near-duplicate records in 1 cluster(s)" in advice
    assert "near_dedup=true near_dup_threshold=0.8" in advice
    assert "1 record(s) contain personal information (cn_mobile: 1, email: 1)" in advice
    assert "1 record(s) contain 1 control character(s)" in advice
    assert "the response (assistant turns) is too long (max_response_chars=10000)" in advice
    assert "the prompt (user turns) is too short (min_prompt_chars=5)" in advice
    assert "2 of 12 record(s) score below pass_score=80" in advice
    assert "only 12 usable record(s)" in advice
    # every sentence names the command or option that fixes it
    assert all("`tunesmith data" in line for line in report["recommendations"])


def test_clean_data_gets_no_advice(tmp_path):
    rows = [
        {"instruction": f"Question {w}: define the word '{w}'.", "output": f"{w} is a word: {d}"}
        for w, d in [("apple", "a round fruit of a tree."), ("river", "a large natural stream.")]
    ]
    rules = QualityRules(min_dataset_records=2)
    report = inspect_data([write_jsonl(tmp_path / "ok.jsonl", rows)], rules=rules)
    assert report["recommendations"] == ["No problems found: the data is ready to train on."]
    assert report["quality"]["overall"] == 100


def test_tokens_and_truncation_with_a_tokenizer(planted, tiny_tokenizer):
    report = inspect_data(planted, tokenizer=tiny_tokenizer, cutoff_len=1000, preview=1)
    long_messages = [
        {"role": "user", "content": TRAIN[9]["instruction"]},
        {"role": "assistant", "content": LONG},
    ]
    example = tokenize_conversation(tiny_tokenizer, long_messages, 10**9)
    tokens = report["lengths"]["tokens"]
    assert tokens["total"]["max"] == len(example.input_ids)
    assert tokens["response"]["max"] == example.trainable_tokens
    assert report["truncation"] == {"cutoff_len": 1000, "truncated": 1, "share": round(1 / 12, 4)}
    assert "1 record(s) (8.3%) are longer than cutoff_len=1000 tokens" in "\n".join(
        report["recommendations"]
    )


def _marks(page: str) -> list[str]:
    return [html.unescape(m) for m in re.findall(r"<mark>(.*?)</mark>", page, re.DOTALL)]


def test_html_preview_marks_only_the_assistant_text(planted, tiny_tokenizer, tmp_path):
    report = inspect_data(planted, tokenizer=tiny_tokenizer, preview=2)
    html_path, json_path = write_inspect_report(report, tmp_path / "out")
    page = html_path.read_text(encoding="utf-8")
    # The chat template's rendering: the assistant turn and its end-of-turn token are trained.
    assert _marks(page) == [HASH + "<|im_end|>\n", WATER + "<|im_end|>\n"]
    assert "Explain what a hash table is." in html.unescape(page)  # the prompt is shown, unmarked
    assert page.count("data:image/png;base64,") == 3  # lengths, scores, languages
    assert json.loads(json_path.read_text(encoding="utf-8")) == json.loads(json.dumps(report))


def test_plain_preview_without_a_tokenizer(report, tmp_path):
    page = write_inspect_report(report, tmp_path)[0].read_text(encoding="utf-8")
    assert _marks(page) == [HASH, WATER]
    assert report["preview"][0]["template"] == "plain"


def test_marked_escapes_html():
    assert marked("<b>hi</b> & bye", [(3, 5)]) == "&lt;b&gt;<mark>hi</mark>&lt;/b&gt; &amp; bye"


def test_classification_csv_label_balance(tmp_path):
    path = tmp_path / "labels.csv"
    rows = ["text,label"] + [f"a fine positive review number {i},pos" for i in range(8)]
    rows += ["a bad negative review,neg", "another bad negative review,neg"]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = inspect_data([str(path)])
    assert report["files"][0]["format"] == "text"
    assert report["labels"] == {
        "counts": {"pos": 8, "neg": 2},
        "unlabelled": 0,
        "imbalance_ratio": 4.0,
    }
    assert report["turns"]["conversations"] == 0
    advice = "\n".join(report["recommendations"])
    assert "'pos' has 8 records and 'neg' only 2" in advice
    assert inspect_data([str(path)], rules=QualityRules(max_label_imbalance=5))["labels"]


def test_unreadable_rest_of_a_json_file_is_reported_not_fatal(tmp_path):
    path = tmp_path / "broken.json"
    good = json.dumps(TRAIN[0])
    path.write_text(f"[\n{good},\n{good},\n{{oops}}\n]\n", encoding="utf-8")
    report = inspect_data([str(path)])
    assert report["records"] == {"read": 3, "valid": 2, "malformed": 1}
    assert report["files"][0]["stopped"].startswith(f"{path}:4: invalid JSON")
    assert report["malformed"]["examples"][0]["where"] == f"{path}:4"


def test_undetectable_records_before_the_first_detectable_one(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"question": "?"}, TRAIN[0]])
    report = inspect_data([path])
    assert report["files"][0]["format"] == "alpaca"
    assert report["records"] == {"read": 2, "valid": 1, "malformed": 1}
    assert "cannot detect format" in report["malformed"]["examples"][0]["reason"]


def test_missing_file_and_bad_options_stop(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        inspect_data([str(tmp_path / "nope.jsonl")])
    with pytest.raises(ValueError, match="unknown format"):
        inspect_data([], fmt="parquet")


def test_a_template_that_refuses_a_record_is_reported_not_fatal(planted):
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import CHATML, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    refuse = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}"
    tokenizer.chat_template = refuse + "{% endif %}" + CHATML
    report = inspect_data(planted, tokenizer=tokenizer, cutoff_len=1000, preview=12)
    assert report["lengths"]["token_errors"] == {"the chat template failed: no system role": 1}
    assert report["truncation"] == {"cutoff_len": 1000, "truncated": 1, "share": round(1 / 11, 4)}
    templates = [p["template"] for p in report["preview"]]
    assert templates.count("plain") == 1 and templates.count("chat") == 11
