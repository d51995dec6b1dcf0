"""Distillation: the KD loss by hand, logit KD on tiny models, sequence-level KD data."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import run_config, train_run

from tunesmith.data.formats import load_conversations
from tunesmith.train.distill import kd_loss
from tunesmith.utils.errors import ConfigError
from tunesmith.utils.llm import Reply

# --- kd_loss ---------------------------------------------------------------------------


def _softmax(xs: list[float], t: float) -> list[float]:
    exps = [math.exp(x / t) for x in xs]
    return [e / sum(exps) for e in exps]


def test_kd_loss_equals_a_hand_computation():
    # one row of 4 positions, vocabulary of 3; labels: prompt token, two answer tokens, padding
    student = [[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [0.5, 0.5, 2.0], [9.0, 9.0, 9.0]]
    teacher = [[2.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 3.0], [-9.0, 0.0, 9.0]]
    labels = [-100, 2, 1, -100]
    temperature, alpha = 2.0, 0.3
    # position t predicts labels[t + 1]: positions 0 and 1 count, 2 and 3 do not
    ce = kl = 0.0
    for t in (0, 1):
        target = labels[t + 1]
        ce += -math.log(_softmax(student[t], 1.0)[target])
        p, q = _softmax(teacher[t], temperature), _softmax(student[t], temperature)
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    expected = alpha * ce / 2 + (1 - alpha) * temperature**2 * kl / 2
    loss = kd_loss(
        torch.tensor([student]), torch.tensor([teacher]), torch.tensor([labels]), 2.0, 0.3
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_kd_loss_ignores_masked_positions_and_is_zero_for_the_teacher_itself():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, -100, -100]])
    assert kd_loss(logits, logits.clone(), labels, 2.0, alpha=0.0).item() == pytest.approx(
        0.0, abs=1e-6
    )
    other = torch.randn(2, 5, 7)
    base = kd_loss(other, logits, labels, 2.0, 0.5)
    assert base.item() > 0
    changed = other.clone()
    changed[0, 0, 2] += 5  # predicts a masked label: no effect
    changed[1, 3:, 1] -= 5  # padding: no effect
    changed[0, 4, 0] += 5  # the last position predicts nothing: no effect
    assert kd_loss(changed, logits, labels, 2.0, 0.5).item() == pytest.approx(base.item())
    changed[0, 1, 0] += 5  # predicts label 3, an answer token: counts
    assert kd_loss(changed, logits, labels, 2.0, 0.5).item() != pytest.approx(base.item())


# --- training --------------------------------------------------------------------------


@pytest.fixture
def student_dir(tmp_path, tiny_tokenizer):
    """A second tiny Llama with the same tokenizer and other random weights."""
    from conftest import build_tiny_llama

    folder = tmp_path / "student"
    build_tiny_llama(len(tiny_tokenizer), seed=1).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def _config(tmp_path, student, data, *overrides):
    return run_config(
        tmp_path,
        student,
        data,
        "distill",
        "train.stage=distill",
        "method.type=full",
        "train.distill.agreement_prompts=4",
        *overrides,
    )


def test_logit_distillation_raises_agreement_with_the_teacher(
    tmp_path, tiny_tokenizer, student_dir, alpaca_file
):
    from conftest import build_tiny_llama

    # the student's own body with another, confident output layer: what it learns on the
    # training answers carries over to the teacher's answers on other prompts
    teacher = build_tiny_llama(len(tiny_tokenizer), seed=1)
    torch.manual_seed(2)
    with torch.no_grad():
        teacher.lm_head.weight.normal_().mul_(3)
    teacher.save_pretrained(tmp_path / "teacher")
    tiny_tokenizer.save_pretrained(tmp_path / "teacher")
    config = _config(
        tmp_path,
        student_dir,
        alpaca_file,
        f"train.distill.teacher={tmp_path / 'teacher'}",
        "train.distill.alpha=0.0",  # pure KD: the student imitates the teacher only
        "train.learning_rate=1e-2",
        "train.max_steps=15",
    )
    result = train_run(config)
    agreement = result.summary["agreement"]
    assert agreement["prompts"] == 4
    # 15 steps on 8 answers: the student moves towards the teacher on unseen answers too
    assert agreement["after"] > agreement["before"]
    losses = [json.loads(line)["loss"] for line in result.run.metrics_path.read_text().splitlines()]
    assert losses[-1] < 0.5 * losses[0]


def test_different_vocabularies_point_to_sequence_distillation(
    tmp_path, tiny_model_dir, alpaca_file
):
    from conftest import build_tiny_llama, build_tiny_tokenizer

    other_tok = build_tiny_tokenizer()
    other_tok.add_tokens(["<extra>"])
    other = tmp_path / "other"
    build_tiny_llama(len(other_tok)).save_pretrained(other)
    other_tok.save_pretrained(other)
    config = _config(tmp_path, tiny_model_dir, alpaca_file, f"train.distill.teacher={other}")
    with pytest.raises(ConfigError, match="mode=sequence"):
        train_run(config)


class FakeTeacher:
    """An OpenAI-compatible teacher: answers with the question reversed (one is cut short)."""

    def replies(self, conversations, max_new_tokens, temperature):
        texts = [c[-1]["content"][::-1] for c in conversations]
        return [Reply(t, finished=not t.startswith("?1")) for t in texts]


def test_sequence_distillation_writes_an_sft_dataset_and_trains_on_it(
    tmp_path, tiny_model_dir, alpaca_file, monkeypatch
):
    import tunesmith.runs.inference as client

    monkeypatch.setattr(client, "make_client", lambda spec: FakeTeacher())
    config = _config(
        tmp_path,
        tiny_model_dir,
        alpaca_file,
        "train.distill.teacher=http://127.0.0.1:9/v1#teacher",
        "train.distill.mode=sequence",
        "train.max_steps=2",
        "method.type=lora",
    )
    result = train_run(config)
    path = result.run.root / "teacher_data.jsonl"
    conversations, stats = load_conversations([path])  # valid SFT data for data/formats.py
    assert stats["formats"][str(path)] == "openai"
    questions = [f"What is {i} plus {i}?" for i in range(8) if i != 1]  # "?1 sulp 1..." was cut
    assert [c.messages[-2]["content"] for c in conversations] == questions
    assert [c.messages[-1]["content"] for c in conversations] == [q[::-1] for q in questions]
    rejects = result.run.rejects_path.read_text().splitlines()
    assert len(rejects) == 1 and "cut" in json.loads(rejects[0])["reason"]
    assert result.summary["data"]["examples"] == 7
    assert result.summary["mode"] == "sequence"
    assert 0 <= result.summary["agreement"]["before"] <= 1
