"""The planner on stage cls: the real data read, a classifier probe, padded batches priced from
the length distribution, encoders capped at their position table, FLOPs of an encoder."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from tunesmith.config.schema import RunConfig
from tunesmith.plan.batches import RowCost, epoch_batches, epoch_lengths, padded, padded_tokens
from tunesmith.plan.planner import make_plan, plan_summary

POSITIONS = 64  # the tiny encoder's position table, and its tokenizer's model_max_length
WORDS = [f"w{i}" for i in range(40)]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> Path:
    """A tiny BERT (conftest's config) with a WordPiece tokenizer that knows its limit."""
    from conftest import tiny_bert_config
    from transformers import BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-encoder")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tokenizer = BertTokenizerFast(
        vocab={w: i for i, w in enumerate(vocab)}, model_max_length=POSITIONS
    )
    torch.manual_seed(0)
    config = tiny_bert_config(vocab_size=len(vocab), max_position_embeddings=POSITIONS)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _data(path: Path, words_per_text, n: int = 40) -> Path:
    """n records over three labels; words_per_text(i): the i-th text's length in words."""
    rng = random.Random(0)
    lines = [
        json.dumps({"text": " ".join(rng.choices(WORDS, k=words_per_text(i))), "label": i % 3})
        for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _config(model: Path, train: Path, **train_overrides) -> RunConfig:
    data = {"train": [str(train)], "cutoff_len": train_overrides.pop("cutoff_len", 4096)}
    return RunConfig.model_validate(
        {
            "model": {"name_or_path": str(model)},
            "method": {"type": "lora", "r": 4},
            "data": data,
            "train": {"stage": "cls", "batch_size": 4, "epochs": 1} | train_overrides,
        }
    )


@pytest.fixture
def fixed_rate(monkeypatch):
    """The FLOPs path at a fixed device rate: estimates compare without timing anything."""
    monkeypatch.setattr("tunesmith.plan.cls_time.device_flops", lambda hardware: 1e9)


# the plan ------------------------------------------------------------------------------------


def test_cls_plan_reads_the_file_and_probes_the_classifier(encoder_dir, tmp_path):
    train = _data(tmp_path / "train.jsonl", lambda i: 5 + 7 * (i % 5), n=60)
    # cutoff_len 4096 on an encoder of 64 positions: inputs are cut to 64, nothing breaks
    plan = make_plan(_config(encoder_dir, train, cutoff_len=4096))
    assert plan.data.records == 54  # 60 read, 10% of each label held out for validation
    assert plan.data.count == 54 and plan.data.eval_examples == 6 and plan.data.labels == 3
    assert len(plan.data.lengths) == 54 and plan.data.longest <= POSITIONS
    t = plan.time
    assert t.method == "probe", t.note
    assert "probe impossible" not in t.note and "assumed" not in t.note
    assert set(t.parts) == {"train", "eval", "setup"} and t.steps == 14
    assert t.seconds == pytest.approx(sum(t.parts.values()))
    assert plan.here.activations > 0


def test_examples_not_records_are_counted(encoder_dir, tmp_path):
    """A record cut into several windows (long_text chunk) is several training examples."""
    train = _data(tmp_path / "train.jsonl", lambda i: 150, n=30)
    config = _config(encoder_dir, train, cutoff_len=32, cls={"long_text": "chunk"})
    plan = make_plan(config, probe=False)
    assert plan.data.records == 27  # 30 read, one of each label's ten held out
    assert plan.data.count > 2 * plan.data.records
    assert max(plan.data.lengths) <= 32


def test_estimate_follows_the_padded_lengths(encoder_dir, tmp_path, fixed_rate):
    head = {"long_text": "head"}  # one example per record, whatever its length
    short = _config(encoder_dir, _data(tmp_path / "s.jsonl", lambda i: 6), cls=head)
    long = _config(encoder_dir, _data(tmp_path / "l.jsonl", lambda i: 200), cls=head)
    short, long = make_plan(short, probe=False), make_plan(long, probe=False)
    assert short.data.records == long.data.records
    assert (short.data.longest, long.data.longest) == (8, POSITIONS)  # [CLS] 6 words [SEP]
    from tunesmith.plan.cls_time import flops_costs

    row, _ = flops_costs(long)
    expected = row(POSITIONS) / row(8)  # every batch padded to 8 vs 64 tokens
    assert long.time.parts["train"] / short.time.parts["train"] == pytest.approx(expected)
    assert long.time.method == "flops"


def test_padding_is_priced_by_the_sampler_and_dropped_by_packing(encoder_dir, tmp_path, fixed_rate):
    mixed = _data(tmp_path / "mixed.jsonl", lambda i: 4 if i % 4 else 200, n=80)

    def plan(**train):
        config = _config(encoder_dir, mixed, cls={"long_text": "head"}, **train)
        return make_plan(config, probe=False)

    grouped = plan(optimize=False)  # padded batches (no padding-free encoder path)
    shuffled = plan(sampling="random", optimize=False)
    assert grouped.config.train.sampler == "group_by_length"
    assert grouped.time.parts["train"] < 0.6 * shuffled.time.parts["train"]
    assert "% padding" in shuffled.time.note
    # padding-free: each text at its own length, whatever the sampler (not even rounded to 8)
    packed = plan(sampling="random")
    assert "padding-free" in packed.time.note
    assert packed.time.parts["train"] < grouped.time.parts["train"]
    assert packed.time.tokens == shuffled.time.tokens


def test_flops_of_an_encoder(encoder_dir, tmp_path, fixed_rate):
    """Bidirectional attention, no LM head, embeddings looked up; no data: the position table."""
    from conftest import tiny_bert_config
    from transformers import BertForSequenceClassification

    from tunesmith.plan.cls_time import flops_costs

    full = _config(encoder_dir, tmp_path / "none.jsonl").model_copy(
        update={"method": RunConfig.model_validate({"method": {"type": "full"}}).method}
    )
    plan = make_plan(full, probe=False, read_data=False)
    shapes, facts = plan.facts.shapes, plan.facts
    assert shapes.bidirectional and shapes.positions == POSITIONS
    config = tiny_bert_config(vocab_size=45, num_labels=2, max_position_embeddings=POSITIONS)
    model = BertForSequenceClassification(config)
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    assert facts.embeddings == embeddings
    weights = facts.total - embeddings
    row, forward = flops_costs(plan)
    # full fine-tuning: 6 W per token; attention 4 x layers x L x q_dim forward, 3x in training
    assert row.b * 1e9 == pytest.approx(6 * weights)
    assert row.c * 1e9 == pytest.approx(3 * 4 * shapes.layers * shapes.q_dim)
    assert forward.c * 1e9 == pytest.approx(4 * shapes.layers * shapes.q_dim)
    # no data read: 1000 records of the longest input the model takes, not cutoff_len 4096
    assert plan.time.parts["train"] == pytest.approx(1000 * row(POSITIONS))
    assert "assumed" in plan.time.note


def test_encoder_memory_is_capped_at_its_positions(encoder_dir, tmp_path):
    base = _config(encoder_dir, tmp_path / "none.jsonl", cutoff_len=4096)
    capped = make_plan(base, probe=False, read_data=False)
    at_limit = base.model_copy(
        update={"data": base.data.model_copy(update={"cutoff_len": POSITIONS})}
    )
    assert (
        capped.here.activations
        == make_plan(at_limit, probe=False, read_data=False).here.activations
    )


def test_plan_summary_counts_the_classifier(encoder_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from tunesmith.models.methods import count_parameters

    config = _config(encoder_dir, _data(tmp_path / "t.jsonl", lambda i: 5))
    total = count_parameters(AutoModelForSequenceClassification.from_pretrained(encoder_dir))[1]
    lm_total = count_parameters(AutoModelForCausalLM.from_pretrained(encoder_dir))[1]
    summary = plan_summary(config)
    assert f"of {total:,} base parameters" in summary, summary
    assert f"{lm_total:,}" not in summary


# padded batches -------------------------------------------------------------------------------


def test_epoch_lengths_keep_the_sample_distribution():
    lengths = epoch_lengths([10, 20, 30], 7, seed=0)
    assert len(lengths) == 7 and Counter(lengths)[10] >= 2 and set(lengths) == {10, 20, 30}


def test_batches_are_padded_to_their_longest_rounded_to_8():
    assert [padded(n) for n in (1, 8, 9, 511, 512)] == [8, 8, 16, 512, 512]
    batches = epoch_batches([3, 9, 17, 30, 5], batch=2, sampler="sequential", seed=0)
    assert batches == Counter({(2, 16): 1, (2, 32): 1, (1, 8): 1})
    assert padded_tokens(batches) == 2 * 16 + 2 * 32 + 8


def test_group_by_length_sorts_within_megabatches():
    rng = random.Random(0)
    lengths = [rng.choice([6, 500]) for _ in range(640)]
    grouped = epoch_batches(lengths, 16, "group_by_length", seed=1)
    shuffled = epoch_batches(lengths, 16, "random", seed=1)
    assert sum(grouped.values()) == sum(shuffled.values()) == 40
    assert padded_tokens(grouped) < 0.7 * padded_tokens(shuffled)
    # megabatches of min(640 // 64, 50) = 10 batches, each sorted: at most one mixed batch each
    assert sum(n for (_, length), n in grouped.items() if length == 504) <= 26


def test_row_cost_fit_recovers_a_quadratic_and_stays_non_negative():
    exact = RowCost.fit([(n, 0.01 + 2e-4 * n + 1e-6 * n * n) for n in (64, 256, 512)])
    assert (exact.a, exact.b, exact.c) == pytest.approx((0.01, 2e-4, 1e-6))
    # a concave measurement would need c < 0: the closest non-negative form is kept instead
    bent = RowCost.fit([(64, 0.1), (256, 0.35), (512, 0.5)])
    assert min(bent.a, bent.b, bent.c) >= 0 and 0.25 < bent(256) / 0.35 < 1.5
    batches = Counter({(16, 64): 2, (3, 512): 1})
    cost = RowCost(0.0, 1.0, 0.0, step=5.0)
    assert cost.seconds(batches, optimizer_steps=3) == 2 * 16 * 64 + 3 * 512 + 3 * 5.0
