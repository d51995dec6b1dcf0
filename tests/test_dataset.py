"""build_sft_data: counts, truncation, rejects, and the collator."""

from __future__ import annotations

import json

import pytest

from tunesmith.config.schema import DataConfig
from tunesmith.data.dataset import SFTCollator, build_sft_data
from tunesmith.data.render import IGNORE_INDEX
from tunesmith.utils.errors import DataError

NO_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _write(path, records):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    return path


def test_truncation_is_counted_and_short_records_kept(tmp_path, tiny_tokenizer):
    data = _write(
        tmp_path / "d.jsonl",
        [
            {"instruction": "hi", "output": "hello"},
            {"instruction": "hi", "output": "hello " * 60},
            {"instruction": "hi", "output": "hello " * 80},
        ],
    )
    cfg = DataConfig(train=[str(data)], cutoff_len=48)
    built = build_sft_data(cfg.train, cfg, tiny_tokenizer)
    assert built.stats["examples"] == 3
    assert built.stats["truncated"] == 2
    assert [len(e["input_ids"]) for e in built.examples][1:] == [48, 48]


def test_every_record_is_kept_or_rejected_with_a_reason(tmp_path, tiny_tokenizer):
    data = _write(
        tmp_path / "d.jsonl",
        [
            {"instruction": "hi", "output": "hello"},
            {"instruction": "hi", "output": ""},  # malformed: empty output
            {"instruction": "word " * 60, "output": "late answer"},  # answer beyond cutoff_len
            {"instruction": "again", "output": "fine"},
        ],
    )
    cfg = DataConfig(train=[str(data)], cutoff_len=32, on_error="skip")
    rejected = []
    built = build_sft_data(cfg.train, cfg, tiny_tokenizer, lambda *r: rejected.append(r))
    assert built.stats["read"] == 4
    assert built.stats["examples"] + built.stats["rejected"] == 4
    assert next((line, "output" in reason) for _, line, reason, _ in rejected) == (2, True)
    assert rejected[1][1] == 3 and "cutoff_len=32" in rejected[1][2]
    assert all(source == str(data) for source, *_ in rejected)


def test_too_long_record_is_rejected_without_stopping_the_run(tmp_path, tiny_tokenizer):
    data = _write(
        tmp_path / "d.jsonl",
        [{"instruction": "word " * 60, "output": "late"}, {"instruction": "hi", "output": "ok"}],
    )
    cfg = DataConfig(train=[str(data)], cutoff_len=32)  # on_error: stop
    rejected = []
    built = build_sft_data(cfg.train, cfg, tiny_tokenizer, lambda *r: rejected.append(r))
    assert built.stats["examples"] == 1
    assert built.stats["rejected"] == built.stats["too_long"] == 1
    assert [(line, "too long" in reason) for _, line, reason, _ in rejected] == [(1, True)]
    assert build_sft_data(cfg.train, cfg, tiny_tokenizer).stats["too_long"] == 1  # no sink


ZH_SYSTEM = "你是一位耐心的中文助教。"


def _zh_dialog(turns: int, question: int = 1) -> dict:
    messages = [{"role": "system", "content": ZH_SYSTEM}]
    for i in range(turns):
        messages += [
            {"role": "user", "content": f"第{i}轮问题：" + "请解释什么是过拟合。" * question},
            {"role": "assistant", "content": f"第{i}轮回答：" + "过拟合是模型记住了噪声。" * 3},
        ]
    return {"messages": messages}


def test_long_chinese_dialog_drops_its_earliest_turns(tmp_path, tiny_tokenizer):
    """The first assistant turn starts past cutoff_len: the earliest exchanges go, the system
    message and the latest exchange stay, and the record trains (counted as truncated)."""
    long_first = _zh_dialog(5)
    long_first["messages"][1]["content"] = "很长的开场白。" * 60  # pushes answer 0 past the cutoff
    data = _write(tmp_path / "zh.jsonl", [long_first, _zh_dialog(1), _zh_dialog(1, question=40)])
    cfg = DataConfig(train=[str(data)], cutoff_len=256)  # on_error: stop
    rejected = []
    built = build_sft_data(cfg.train, cfg, tiny_tokenizer, lambda *r: rejected.append(r))
    assert built.stats["read"] == 3 and built.stats["examples"] == 2
    assert built.stats["truncated"] == 1 and built.stats["too_long"] == 1
    assert rejected[0][1] == 3 and "data.cutoff_len=256" in rejected[0][2]
    first = built.examples[0]
    text = tiny_tokenizer.decode(first["input_ids"])
    assert len(first["input_ids"]) <= 256
    assert text.startswith(f"<|im_start|>system\n{ZH_SYSTEM}<|im_end|>")
    assert "很长的开场白" not in text and "第1轮问题" in text
    trained = tiny_tokenizer.decode([t for t in first["labels"] if t != IGNORE_INDEX])
    assert trained.startswith("第1轮回答")


def test_template_refusal_is_a_record_reason(tmp_path):
    from conftest import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = NO_SYSTEM_TEMPLATE
    data = _write(
        tmp_path / "d.jsonl",
        [
            {"instruction": "hi", "output": "hello"},
            {"instruction": "hi", "output": "hello", "system": "be brief"},
        ],
    )
    cfg = DataConfig(train=[str(data)], on_error="skip")
    rejected = []
    built = build_sft_data(cfg.train, cfg, tokenizer, lambda *r: rejected.append(r))
    assert built.stats["examples"] == 1
    assert rejected[0][1] == 2
    assert "System role not supported" in rejected[0][2]
    with pytest.raises(DataError, match=r"d\.jsonl:2: the chat template refused"):
        build_sft_data(cfg.train, DataConfig(train=[str(data)]), tokenizer)


def test_max_samples_is_counted(tmp_path, tiny_tokenizer):
    data = _write(tmp_path / "d.jsonl", [{"instruction": f"q{i}", "output": "a"} for i in range(5)])
    cfg = DataConfig(train=[str(data)], max_samples=2)
    built = build_sft_data(cfg.train, cfg, tiny_tokenizer)
    assert built.stats["examples"] == 2
    assert built.stats["beyond_max_samples"] == 3


def test_collator_pads_ids_and_ignores_padding_in_labels():
    batch = SFTCollator(pad_token_id=0, pad_to_multiple_of=4)(
        [
            {"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]},
            {"input_ids": [8], "labels": [8]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, 6, 7, IGNORE_INDEX],
        [8] + [IGNORE_INDEX] * 3,
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
