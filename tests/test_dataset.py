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


def test_unanswerable_record_stops_the_run_by_default(tmp_path, tiny_tokenizer):
    data = _write(tmp_path / "d.jsonl", [{"instruction": "word " * 60, "output": "late"}])
    cfg = DataConfig(train=[str(data)], cutoff_len=32)
    with pytest.raises(DataError, match=r"d\.jsonl:1: no assistant tokens left"):
        build_sft_data(cfg.train, cfg, tiny_tokenizer)


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
