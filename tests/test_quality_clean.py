"""`data clean`: planted problems, step order, outputs, config errors and the read invariant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data.convert import write_records
from tunesmith.data.formats import load_conversations
from tunesmith.data.quality.clean import (
    STEPS,
    CleanConfig,
    CleanResult,
    clean_records,
    write_clean_output,
)
from tunesmith.data.readers import read_records
from tunesmith.utils.errors import ConfigError, DataError

PARIS = {
    "instruction": "What is the capital of France?",
    "input": "",
    "output": "The capital of France is Paris, a city on the Seine.",
}
PHOTO = {
    "instruction": "Explain what photosynthesis is in simple terms.",
    "input": "",
    "output": (
        "Photosynthesis is how green plants use sunlight, water and carbon dioxide to make "
        "sugar for food, and they release oxygen into the air that animals breathe."
    ),
}
LONG_OUTPUT = " ".join(
    f"Step {i}: check part {i} of the engine and note its state." for i in range(8)
)

# line -> raw line text. Every problem the pipeline handles is planted once.
PLANTED: dict[int, object] = {
    1: {
        "instruction": "请介绍一下\x07北京的历史。",
        "output": "北京是中国的首都，有三千多年的建城史。",
    },
    2: {
        "instruction": "Ｅｘｐｌａｉｎ ｔｈｅ ｔｅｒｍ ＡＰＩ.",
        "output": "An API is a set of rules that lets programs talk to each other.",
    },
    3: {"instruction": "Hi", "output": "Hello! How can I help you today?"},
    4: {"instruction": "Describe how to service an engine.", "output": LONG_OUTPUT},
    5: {
        "instruction": "How do I contact the support team?",
        "output": "Email help@example.com or call 13812345678; server at 192.168.1.10.",
    },
    6: {"instruction": "这份机密文件怎么处理？", "output": "请按照公司规定交给安全部门统一处理。"},
    7: PARIS,
    8: PHOTO,
    9: {
        "instruction": "Расскажи о погоде в Москве.",
        "output": "Сегодня в Москве солнечно и тепло.",
    },
    10: '{"instruction": "broken line", "output": ',
    11: {"instruction": "Tell me a joke please."},
    12: {"instruction": "Rate this answer format please.", "output": "!!! ??? ### $$$ %%% &&&"},
    13: PARIS,
    14: {**PHOTO, "output": PHOTO["output"].replace("sugar", "sugor").replace("food", "fond")},
}
KEPT_LINES = [1, 2, 5, 7, 8]


def planted_config(**overrides) -> CleanConfig:
    settings = {
        "max_response_chars": 200,
        "sensitive_words": ["机密"],
        "languages": ["zh", "en"],
        "min_quality_score": 80,
        **overrides,
    }
    return CleanConfig(**settings)


def write_lines(path: Path, lines: dict[int, object]) -> Path:
    """Write each record on its own line number (gaps become blank lines)."""
    text = [""] * max(lines)
    for n, value in lines.items():
        text[n - 1] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def check_invariant(result: CleanResult) -> None:
    """read == kept + rejected, and the per-step counts chain from one step to the next."""
    assert result.read == len(result.kept) + len(result.rejects)
    assert sum(s["rejected"] for s in result.step_stats) == len(result.rejects)
    for before, after in zip(result.step_stats, result.step_stats[1:], strict=False):
        assert after["in"] == before["kept"]
    assert result.step_stats[-1]["kept"] == len(result.kept)
    assert result.step_stats[0]["in"] == result.read


def by_line(result: CleanResult) -> dict[int, tuple[str, str]]:
    return {r["line"]: (r["step"], r["reason"]) for r in result.rejects}


@pytest.fixture
def planted(tmp_path) -> Path:
    return write_lines(tmp_path / "data.jsonl", PLANTED)


def test_planted_problems_are_each_rejected_by_the_right_step(planted):
    result = clean_records([planted], planted_config())
    check_invariant(result)
    assert [c.line for c in result.kept] == KEPT_LINES
    src = str(planted)
    assert by_line(result) == {
        10: ("parse", "invalid JSON: Expecting value (column 42)"),
        11: ("parse", "field 'output' is missing or empty"),
        3: ("length", "prompt has 2 chars, below min_prompt_chars=5"),
        4: ("length", f"response has {len(LONG_OUTPUT)} chars, above max_response_chars=200"),
        6: ("sensitive", "contains sensitive word(s): '机密'"),
        9: ("language", "language 'ru' is not one of zh, en"),
        12: (
            "quality",
            "quality score 35 < 80: the response has no letters or digits; "
            "the response has too many special characters",
        ),
        13: ("exact_dedup", f"exact duplicate of {src}:7"),
        14: ("near_dedup", f"near-duplicate of {src}:8 (similarity ≥ 0.8)"),
    }


def test_rejects_keep_the_original_record(planted):
    result = clean_records([planted], planted_config())
    originals = {r["line"]: r["record"] for r in result.rejects}
    assert originals[13] == PARIS
    assert originals[10] == PLANTED[10]  # a broken line is kept as its text
    assert originals[6]["instruction"] == "这份机密文件怎么处理？"


def test_normalize_and_pii_modify_kept_records(planted):
    result = clean_records([planted], planted_config())
    kept = {c.line: c.messages for c in result.kept}
    assert kept[1][0]["content"] == "请介绍一下北京的历史。"  # control character gone
    assert kept[2][0]["content"] == "Explain the term API."  # full-width folded
    assert kept[5][1]["content"] == "Email [EMAIL] or call [CN_MOBILE]; server at [IPV4]."
    stats = {s["step"]: s for s in result.step_stats}
    assert stats["normalize"]["modified"] == 2
    assert stats["pii"]["modified"] == 1
    assert stats["pii"]["hits"] == {"email": 1, "cn_mobile": 1, "ipv4": 1}
    assert stats["language"]["detected"] == {"zh": 1, "en": 7, "ru": 1}


def test_steps_run_in_the_configured_order_and_can_be_dropped(planted):
    steps = ["exact_dedup", "length"]
    result = clean_records([planted], planted_config(steps=steps))
    check_invariant(result)
    assert [s["step"] for s in result.step_stats] == ["parse", *steps]
    assert {step for step, _ in by_line(result).values()} == {"parse", "exact_dedup", "length"}
    # No pii step: the address stays as written.
    kept = {c.line: c.messages for c in result.kept}
    assert "help@example.com" in kept[5][1]["content"]


def test_whitespace_variants_are_exact_duplicates_only_after_normalize(tmp_path):
    first = {"instruction": "Name a  primary colour.", "output": "Red is a primary colour. "}
    second = {"instruction": "Name a primary colour.", "output": "Red is a primary colour."}
    third = {"instruction": "Ｎａｍｅ a primary colour.", "output": "Red is a primary colour."}
    path = write_lines(tmp_path / "ws.jsonl", {1: first, 2: second, 3: third})

    before = clean_records([path], CleanConfig(steps=["exact_dedup", "normalize"]))
    after = clean_records([path], CleanConfig(steps=["normalize", "exact_dedup"]))
    check_invariant(before)
    check_invariant(after)
    assert [c.line for c in before.kept] == [1, 2, 3]
    assert [c.line for c in after.kept] == [1]
    assert by_line(after) == {
        2: ("exact_dedup", f"exact duplicate of {path}:1"),
        3: ("exact_dedup", f"exact duplicate of {path}:1"),
    }


def test_dedup_key_is_the_whole_conversation(tmp_path):
    same_question = [
        {"instruction": "Give me a fruit name.", "output": "Apple is a common fruit."},
        {"instruction": "Give me a fruit name.", "output": "Mango grows in warm places."},
        {"system": "Answer in one line.", **PARIS},
        PARIS,
    ]
    path = write_lines(tmp_path / "key.jsonl", dict(enumerate(same_question, start=1)))
    result = clean_records([path], CleanConfig(steps=["exact_dedup"]))
    assert [c.line for c in result.kept] == [1, 2, 3, 4]  # answers and system prompts count


def test_pii_drop_rejects_with_the_kinds_found(planted):
    result = clean_records([planted], planted_config(pii="drop"))
    check_invariant(result)
    assert by_line(result)[5] == ("pii", "contains PII: email×1, cn_mobile×1, ipv4×1")


def test_pii_off_and_url_kind(tmp_path):
    record = {
        "instruction": "Where are the docs?",
        "output": "See https://docs.example.org/start now.",
    }
    path = write_lines(tmp_path / "url.jsonl", {1: record})
    default = clean_records([path], CleanConfig())
    with_url = clean_records([path], CleanConfig(pii_kinds=["email", "url"]))
    off = clean_records([path], CleanConfig(pii="off", pii_kinds=["url"]))
    assert "https://docs.example.org/start" in default.kept[0].messages[1]["content"]
    assert with_url.kept[0].messages[1]["content"] == "See [URL] now."
    assert "pii" not in [s["step"] for s in off.step_stats]


def test_sensitive_redact_uses_words_file_relative_to_the_yaml(tmp_path, planted):
    (tmp_path / "words.txt").write_text("机密\n\n  SECRET  \n", encoding="utf-8")
    config = tmp_path / "clean.yaml"
    config.write_text(
        "sensitive_words_file: words.txt\nsensitive_action: redact\nsteps: [sensitive]\n",
        encoding="utf-8",
    )
    cfg = CleanConfig.from_yaml(config)
    assert cfg.word_list() == ["机密", "SECRET"]
    extra = write_lines(tmp_path / "more.jsonl", {1: {**PARIS, "output": "It is a secret: Paris."}})
    result = clean_records([planted, extra], cfg)
    check_invariant(result)
    kept = {(Path(c.source).name, c.line): c.messages for c in result.kept}
    assert kept[("data.jsonl", 6)][0]["content"] == "这份[SENSITIVE]文件怎么处理？"
    assert kept[("more.jsonl", 1)][1]["content"] == "It is a [SENSITIVE]: Paris."
    stats = {s["step"]: s for s in result.step_stats}
    assert stats["sensitive"]["modified"] == 2
    assert stats["sensitive"]["hits"] == {"机密": 1, "SECRET": 1}


def test_required_roles_and_fields(tmp_path):
    records = {
        1: {"system": "Be brief.", "category": "geo", **PARIS},
        2: {"category": "geo", **PARIS},
        3: {"system": "Be brief.", **PARIS},
        4: {"instruction": "Say nothing useful.", "output": "\x00\x01\x02"},  # empty once cleaned
    }
    path = write_lines(tmp_path / "req.jsonl", records)
    cfg = CleanConfig(steps=["normalize", "required"], required=["system", "category"])
    result = clean_records([path], cfg)
    check_invariant(result)
    assert [c.line for c in result.kept] == [1]
    assert by_line(result) == {
        2: ("required", "required role 'system' is missing"),
        3: ("required", "required field 'category' is missing or empty"),
        4: ("required", "required role 'system' is missing"),
    }
    default = clean_records([path], CleanConfig(steps=["normalize", "required"]))
    assert by_line(default) == {4: ("required", "required role 'assistant' has an empty turn")}


def test_writes_output_rejects_stats_and_version(planted, tmp_path):
    cfg = planted_config()
    result = clean_records([planted], cfg)
    out = tmp_path / "out" / "clean.jsonl"
    summary = write_clean_output(result, out, cfg)

    written = [r.data for r in read_records(out)]
    assert len(written) == len(KEPT_LINES)
    assert written[2]["output"] == "Email [EMAIL] or call [CN_MOBILE]; server at [IPV4]."
    assert set(written[0]) == {"instruction", "input", "output"}  # same format as the input
    rejects = [json.loads(line) for line in (out.parent / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["step"]) for r in rejects] == [
        (line, step) for line, (step, _) in by_line(result).items()
    ]
    stats = json.loads(Path(f"{out}.stats.json").read_text(encoding="utf-8"))
    assert stats["read"] == stats["kept"] + stats["rejected"] == len(PLANTED)
    assert [s["step"] for s in stats["steps"]] == ["parse", *STEPS]
    meta = json.loads(Path(f"{out}.meta.json").read_text(encoding="utf-8"))
    assert meta["operation"] == "clean"
    assert meta["size"] == len(KEPT_LINES)
    assert meta["params"]["max_response_chars"] == 200
    assert meta["parents"][0]["path"] == "../data.jsonl"
    assert meta["metrics"]["exact_duplicates"] == meta["metrics"]["near_duplicates"] == 1
    assert meta["metrics"]["pii_hits"] == 3
    assert meta["metrics"]["pass_rate"] == pytest.approx(len(KEPT_LINES) / len(PLANTED), abs=1e-6)
    assert summary["rejects_path"] == str(out.parent / "rejects.jsonl")


def test_rejects_path_can_be_chosen(planted, tmp_path):
    cfg = planted_config()
    result = clean_records([planted], cfg)
    write_clean_output(
        result, tmp_path / "clean.jsonl", cfg, rejects_path=tmp_path / "r" / "x.jsonl"
    )
    assert len((tmp_path / "r" / "x.jsonl").read_text(encoding="utf-8").splitlines()) == 9


@pytest.mark.parametrize(("fmt", "suffix"), [("sharegpt", ".json"), ("openai", ".parquet")])
def test_output_format_conversion_round_trips(planted, tmp_path, fmt, suffix):
    cfg = planted_config(output_format=fmt)
    result = clean_records([planted], cfg)
    out = tmp_path / f"clean{suffix}"
    summary = write_clean_output(result, out, cfg)
    assert summary["format"] == fmt
    back, stats = load_conversations([out])
    assert stats["formats"][str(out)] == fmt
    assert [c.messages for c in back] == [c.messages for c in result.kept]


def test_same_format_needs_agreeing_inputs(planted, tmp_path):
    sharegpt = tmp_path / "chat.jsonl"
    turns = [{"from": "human", "value": "Name a planet."}, {"from": "gpt", "value": "Mars is one."}]
    write_lines(sharegpt, {1: {"conversations": turns}})
    cfg = planted_config()
    result = clean_records([planted, sharegpt], cfg)
    check_invariant(result)
    assert result.formats == {str(planted): "alpaca", str(sharegpt): "sharegpt"}
    with pytest.raises(ConfigError, match="output_format: 'same' is ambiguous"):
        write_clean_output(result, tmp_path / "out.jsonl", cfg)
    explicit = cfg.model_copy(update={"output_format": "openai"})
    assert write_clean_output(result, tmp_path / "out.jsonl", explicit)["kept"] == 6


def test_output_may_not_overwrite_an_input(planted):
    cfg = CleanConfig()
    result = clean_records([planted], cfg)
    with pytest.raises(DataError, match="would overwrite an input"):
        write_clean_output(result, planted, cfg)


def test_unreadable_files_raise(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        clean_records([tmp_path / "missing.jsonl"], CleanConfig())
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "a", "output": "b"},\n  {oops}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json:2: invalid JSON"):
        clean_records([broken], CleanConfig())
    unknown = write_lines(tmp_path / "text.jsonl", {1: {"text": "a"}, 2: {"text": "b"}})
    with pytest.raises(DataError, match=r"text\.jsonl: cannot detect the format"):
        clean_records([unknown], CleanConfig())


def test_undetectable_record_before_a_good_one_is_a_reject(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", {1: {"text": "stray"}, 2: PARIS, 3: [1, 2]})
    result = clean_records([path], CleanConfig())
    check_invariant(result)
    assert [c.line for c in result.kept] == [2]
    assert by_line(result)[1][0] == by_line(result)[3][0] == "parse"
    assert by_line(result)[3][1] == "expected a JSON object, got list"


def test_csv_input_and_explicit_format(tmp_path):
    path = tmp_path / "data.csv"
    write_records(path, [PARIS, PARIS, {**PARIS, "output": "Hi"}])
    result = clean_records([path], CleanConfig(), fmt="alpaca")
    check_invariant(result)
    assert [c.line for c in result.kept] == [2]
    assert by_line(result) == {
        4: ("length", "response has 2 chars, below min_response_chars=10"),
        3: ("exact_dedup", f"exact duplicate of {path}:2"),
    }


def test_empty_input_gives_empty_output(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    cfg = CleanConfig()
    result = clean_records([empty], cfg)
    check_invariant(result)
    summary = write_clean_output(result, tmp_path / "out.jsonl", cfg)
    assert summary["read"] == summary["kept"] == 0
    assert summary["metrics"]["mean_score"] is None


# --- configuration -------------------------------------------------------------------------


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "clean.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "near_dup_treshold: 0.9\n",
            "unknown key 'near_dup_treshold' (did you mean 'near_dup_threshold'?)",
        ),
        (
            "rules:\n  pass_scor: 70\n",
            "unknown key 'rules.pass_scor' (did you mean 'rules.pass_score'?)",
        ),
        ("steps: [normalize, dedup]\n", "steps.1: got 'dedup'"),
        ("pii_kinds: [emial]\n", "unknown PII kind 'emial' (did you mean 'email'?)"),
        ("pii: redcat\n", "(did you mean 'redact'?)"),
        ("steps: [pii, pii]\n", "step(s) listed more than once: pii"),
        ("sensitive_words_file: nope.txt\n", "sensitive_words_file: got"),
        ("min_response_chars: 50\nmax_response_chars: 20\n", "max_response_chars must be >="),
    ],
)
def test_config_errors_name_the_key(tmp_path, text, expected):
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        CleanConfig.from_yaml(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid clean configuration")
    assert expected in message


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write_yaml(tmp_path, "steps: [normalize\npii: redact\n")
    with pytest.raises(ConfigError, match=rf"{path.name}:\d+: invalid YAML"):
        CleanConfig.from_yaml(path)


def test_yaml_overrides_and_round_trip(tmp_path):
    path = write_yaml(tmp_path, "languages: [zh]\nrules:\n  pass_score: 70\n")
    cfg = CleanConfig.from_yaml(path, ["near_dedup=false", "steps=[normalize, exact_dedup]"])
    assert cfg.languages == ["zh"] and cfg.rules.pass_score == 70
    assert cfg.near_dedup is False and cfg.steps == ["normalize", "exact_dedup"]
    assert CleanConfig.model_validate(cfg.model_dump()) == cfg  # what the CLI does


def test_length_limits_are_shared_with_the_quality_rules():
    top = CleanConfig(min_prompt_chars=2)
    assert top.rules.min_prompt_chars == 2
    nested = CleanConfig(rules={"max_response_chars": 3000})
    assert nested.max_response_chars == 3000
    with pytest.raises(ValueError, match="disagree"):
        CleanConfig(min_prompt_chars=2, rules={"min_prompt_chars": 8})
