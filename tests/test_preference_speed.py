"""The packed, fused preference paths (models/preference_speed.py, train/preference_speed.py)
compute what TRL's own trainers compute: per-example log-probabilities, losses, gradients and
rewards within 1e-5 on a tiny model; runs use them and log tokens/s for every stage."""

from __future__ import annotations

import json
import random

import pytest
import torch
from helpers import run_config, train_run

from tunesmith.models.preference_speed import (
    PackedORPOPairs,
    PackedPairs,
    PackedRewardPairs,
    pack_sequences,
    packed_tokens,
    sequence_log_probs,
    sequence_rewards,
    token_log_probs,
)
from tunesmith.models.speed import fused_loss_head, optimize_for_training
from tunesmith.runs.folder import read_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = dict(rtol=1e-5, atol=1e-5)


def _examples(vocab: int, n: int = 4, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    ids = lambda k: [rng.randrange(5, vocab) for _ in range(k)]  # noqa: E731
    return [
        {
            "prompt_ids": ids(rng.randint(3, 7)),
            "chosen_ids": ids(rng.randint(2, 6)),
            "rejected_ids": ids(rng.randint(2, 6)),
        }
        for _ in range(n)
    ]


def _lora_model(model_dir, task: str = "CAUSAL_LM"):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    if task == "SEQ_CLS":
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(
        task_type=task, r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"
    )
    return get_peft_model(model, config)


def _perturb_adapter(*models) -> None:
    """The same non-zero LoRA B in every model: the policy differs from the reference."""
    g = torch.Generator().manual_seed(1)
    params = [
        [p for n, p in m.named_parameters() if "lora_B.default" in n or "score" in n]
        for m in models
    ]
    with torch.no_grad():
        for group in zip(*params, strict=True):
            value = torch.randn(group[0].shape, generator=g) * 0.2
            for p in group:
                p.copy_(value)


def _grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(ours, theirs) -> None:
    assert ours.keys() == theirs.keys() and ours
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], **TOL, msg=name)


def _args(cls, tmp_path, **more):
    return cls(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_length=64,
        bf16=False,
        use_cpu=True,
        report_to=[],
        gradient_checkpointing=False,
        save_strategy="no",
        **more,
    )


# --- the fused log-probabilities and the packed rows ----------------------------------------


def test_token_log_probs_equal_log_softmax_and_its_gradient_over_several_chunks():
    g = torch.Generator().manual_seed(0)
    rows, vocab = 2048, 600  # 2048 rows: 256-column chunks, so three of them
    hidden = torch.randn(rows, 8, generator=g, requires_grad=True)
    weight = torch.randn(vocab, 8, generator=g)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    upstream = torch.randn(rows, generator=g)

    ours = token_log_probs(hidden, weight, targets)
    (ours * upstream).sum().backward()
    ours_grad, hidden.grad = hidden.grad.clone(), None
    expected = torch.log_softmax(hidden @ weight.t(), dim=-1).gather(1, targets[:, None])[:, 0]
    (expected * upstream).sum().backward()

    torch.testing.assert_close(ours, expected, **TOL)
    torch.testing.assert_close(ours_grad, hidden.grad, **TOL)
    with torch.no_grad():  # the reference pass: no gradient kept, same values
        torch.testing.assert_close(token_log_probs(hidden, weight, targets), expected, **TOL)


def test_packed_pairs_share_the_prompt_and_score_only_answer_tokens():
    batch = PackedPairs(max_length=6)(
        [
            {"prompt_ids": [10, 11], "chosen_ids": [12, 13], "rejected_ids": [14]},
            {"prompt_ids": [20, 21, 22], "chosen_ids": [23, 24, 25, 26], "rejected_ids": [27]},
        ]
    )
    # per pair: the shared prompt once, the chosen tail, the rejected tail (the second chosen
    # cut at 6); the tails' positions count on from the prompt
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13, 14, 20, 21, 22, 23, 24, 25, 27]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 2, 0, 1, 2, 3, 4, 5, 3]]
    assert batch["pair_layout"].tolist() == [[2, 2, 1], [3, 3, 1]]
    # the token before each answer token predicts it: the prompt's last for both first tokens
    assert batch["positions"].tolist() == [1, 2, 1, 7, 8, 9, 7]
    assert batch["targets"].tolist() == [12, 13, 14, 23, 24, 25, 27]
    assert batch["segments"].tolist() == [0, 0, 2, 1, 1, 1, 3]  # chosen 0, 1; rejected 2, 3
    assert int(batch["real_tokens"]) == 4 + 6 + 3 + 4 and int(batch["num_sequences"]) == 4


def test_pair_attention_equals_each_sequence_on_its_own(tiny_model_dir):
    """A pair's tails see the shared prompt and themselves only: the same hidden states as each
    sequence run alone (the packed row's numbers are TRL's in the tests below too)."""
    from transformers import AutoModelForCausalLM

    from tunesmith.models.preference_speed import pair_positions, use_pair_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    optimize_for_training(model)
    assert use_pair_attention(model)
    examples = _examples(60, n=2)
    batch = PackedPairs()(examples)
    with torch.no_grad():
        row = model(input_ids=batch["input_ids"], position_ids=pair_positions(batch)).logits[0]
    start = 0
    with torch.no_grad():
        for e, (shared, c_tail, r_tail) in zip(
            examples, batch["pair_layout"].tolist(), strict=True
        ):
            prefix = row[start : start + shared]
            chosen = torch.cat([prefix, row[start + shared : start + shared + c_tail]])
            tail = start + shared + c_tail
            rejected = torch.cat([prefix, row[tail : tail + r_tail]])
            for key, ours in (("chosen_ids", chosen), ("rejected_ids", rejected)):
                alone = model(input_ids=torch.tensor([e["prompt_ids"] + e[key]])).logits[0]
                torch.testing.assert_close(ours, alone, **TOL)
            start = tail + r_tail
    assert start == batch["input_ids"].shape[1]


def test_pair_attention_survives_gradient_checkpointing(tiny_model_dir):
    """The recomputed layers see the pair layout too: the same gradients with checkpointing."""
    from tunesmith.models.preference_speed import use_pair_attention

    batch = PackedPairs()(_examples(60, n=2))
    grads = []
    for checkpointing in (False, True):
        model = _lora_model(tiny_model_dir)
        optimize_for_training(model)
        use_pair_attention(model)
        _perturb_adapter(model)
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        model.train()
        sums, _ = sequence_log_probs(model, fused_loss_head(model), batch)
        (sums * torch.arange(1.0, 5.0)).sum().backward()
        grads.append(_grads(model))
    _assert_same_grads(*grads)


def test_reward_rows_read_the_last_token_that_is_not_padding():
    batch = PackedRewardPairs(pad_token_id=0)(
        [{"chosen_ids": [5, 6, 7], "rejected_ids": [5, 8, 0]}]  # the rejected one ends in pad
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 0]]  # 5 shared
    assert batch["ends"].tolist() == [2, 3]


# --- the same numbers as TRL's own trainers -------------------------------------------------


def test_packed_dpo_gives_trls_log_probs_loss_and_gradients(tmp_path, tiny_model_dir):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig

    from tunesmith.train.preference import _dpo_class
    from tunesmith.train.preference_speed import PackedDPO

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples = _examples(len(tokenizer))
    data = Dataset.from_list(examples)
    args = _args(DPOConfig, tmp_path, beta=0.1, loss_type=["sigmoid"])
    theirs_model, ours_model = _lora_model(tiny_model_dir), _lora_model(tiny_model_dir)
    optimize_for_training(ours_model)  # packed attention, fused LoRA, the oneDNN kernel
    common = dict(ref_model=None, args=args, processing_class=tokenizer, train_dataset=data)
    theirs = _dpo_class()(model=theirs_model, **common)  # TRL's path: padded batches
    ours = _dpo_class()(model=ours_model, data_collator=PackedDPO.collator(64), **common)
    PackedDPO.attach(ours)
    assert "ref" not in ours_model.peft_config  # the fresh copy equals the base model
    _perturb_adapter(theirs_model, ours_model)
    padded, packed = theirs.data_collator(examples[:2]), ours.data_collator(examples[:2])

    # TRL's reference (its "ref" adapter) and policy log-probabilities, per example
    ref_chosen, ref_rejected = theirs.compute_ref_log_probs(theirs_model, padded)
    labels = padded["input_ids"].masked_fill(padded["completion_mask"] == 0, -100)
    with torch.no_grad():
        out = theirs_model(
            input_ids=padded["input_ids"],
            attention_mask=padded["attention_mask"],
            labels=labels,
            fused_lm_head=True,
            use_cache=False,
        )
    policy = out.log_probs.sum(dim=1)
    with torch.no_grad():
        ours_policy = sequence_log_probs(ours_model, fused_loss_head(ours_model), packed)[0]
    torch.testing.assert_close(
        ours.reference_log_probs(packed), torch.cat([ref_chosen, ref_rejected]), **TOL
    )
    torch.testing.assert_close(ours_policy, policy, **TOL)
    assert not torch.allclose(policy, torch.cat([ref_chosen, ref_rejected]))  # a real test

    theirs_model.train(), ours_model.train()
    theirs_loss = theirs.compute_loss(theirs_model, padded)
    ours_loss = ours.compute_loss(ours_model, packed)
    torch.testing.assert_close(ours_loss, theirs_loss, **TOL)
    theirs_loss.backward(), ours_loss.backward()
    _assert_same_grads(_grads(ours_model), _grads(theirs_model))
    for key in ("rewards/chosen", "rewards/margins", "logps/rejected"):
        assert ours._metrics["train"][key] == pytest.approx(theirs._metrics["train"][key], abs=1e-5)


def test_packed_kto_gives_trls_log_probs_kl_loss_and_gradients(tmp_path, tiny_model_dir):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import KTOConfig

    from tunesmith.models.preference_speed import kl_row
    from tunesmith.train.preference import _kto_class
    from tunesmith.train.preference_speed import PackedKTO

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples = [
        {"prompt_ids": e["prompt_ids"], "completion_ids": e["chosen_ids"], "label": i % 2 == 0}
        for i, e in enumerate(_examples(len(tokenizer)))
    ]
    args = _args(KTOConfig, tmp_path, beta=0.1, train_sampling_strategy="sequential")
    theirs_model, ours_model = _lora_model(tiny_model_dir), _lora_model(tiny_model_dir)
    optimize_for_training(ours_model)
    common = dict(args=args, processing_class=tokenizer, train_dataset=Dataset.from_list(examples))
    theirs = _kto_class()(model=theirs_model, ref_model=None, **common)
    ours = _kto_class()(
        model=ours_model, ref_model=None, data_collator=PackedKTO.collator(64), **common
    )
    PackedKTO.attach(ours)
    _perturb_adapter(theirs_model, ours_model)
    rows = [theirs.train_dataset[i] for i in range(2)]
    assert "KL_completion_ids" in rows[0]
    padded, packed = theirs.data_collator(rows), ours.data_collator(rows)

    ref, ref_kl = theirs.compute_ref_log_probs(theirs_model, padded)
    torch.testing.assert_close(ours.reference_log_probs(packed), ref, **TOL)
    torch.testing.assert_close(ours.reference_log_probs(kl_row(packed)), ref_kl, **TOL)
    theirs_model.train(), ours_model.train()
    theirs_loss = theirs.compute_loss(theirs_model, padded)
    ours_loss = ours.compute_loss(ours_model, packed)
    torch.testing.assert_close(ours_loss, theirs_loss, **TOL)
    theirs_loss.backward(), ours_loss.backward()
    _assert_same_grads(_grads(ours_model), _grads(theirs_model))
    for key in ("kl", "rewards/chosen", "rewards/rejected", "logps/chosen"):
        assert ours._metrics["train"][key] == pytest.approx(theirs._metrics["train"][key], abs=1e-5)


def test_packed_orpo_gives_trls_log_probs_loss_and_gradients(tmp_path, tiny_model_dir):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl.experimental.orpo import ORPOConfig

    from tunesmith.train.preference import _pairwise_class
    from tunesmith.train.preference_speed import PackedORPO

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = Dataset.from_list(_examples(len(tokenizer)))
    args = _args(ORPOConfig, tmp_path, beta=0.1, remove_unused_columns=False)
    theirs_model, ours_model = _lora_model(tiny_model_dir), _lora_model(tiny_model_dir)
    optimize_for_training(ours_model)
    common = dict(args=args, processing_class=tokenizer, train_dataset=data)
    theirs = _pairwise_class("orpo")(model=theirs_model, **common)
    ours = _pairwise_class("orpo")(model=ours_model, data_collator=PackedORPO.collator(), **common)
    PackedORPO.attach(ours)
    _perturb_adapter(theirs_model, ours_model)
    rows = [theirs.train_dataset[i] for i in range(2)]
    padded, packed = theirs.data_collator(rows), ours.data_collator(rows)
    assert isinstance(ours.data_collator, PackedORPOPairs)

    theirs_model.train(), ours_model.train()
    chosen, rejected, _, _, nll = theirs.concatenated_forward(theirs_model, padded)
    ours_nll, ours_chosen, ours_rejected = ours.orpo_log_probs(ours_model, packed)
    torch.testing.assert_close(ours_chosen, chosen, **TOL)
    torch.testing.assert_close(ours_rejected, rejected, **TOL)
    torch.testing.assert_close(ours_nll, nll, **TOL)

    theirs_loss, theirs_metrics = theirs.get_batch_loss_metrics(theirs_model, padded)
    ours_loss, ours_metrics = ours.get_batch_loss_metrics(ours_model, packed)
    torch.testing.assert_close(ours_loss, theirs_loss, **TOL)
    for key, value in ours_metrics.items():
        assert value == pytest.approx(theirs_metrics[key], abs=1e-5), key
    theirs_model.zero_grad(), ours_model.zero_grad()
    theirs_loss.backward(), ours_loss.backward()
    _assert_same_grads(_grads(ours_model), _grads(theirs_model))


def test_packed_reward_model_gives_trls_rewards_loss_and_gradients(tmp_path, tiny_model_dir):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import RewardConfig

    from tunesmith.train.preference_speed import PackedReward
    from tunesmith.train.reward import _trainer_class, whole_sequences

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples = whole_sequences(_examples(len(tokenizer)))
    data = Dataset.from_list(examples)
    models = [_lora_model(tiny_model_dir, "SEQ_CLS") for _ in range(2)]
    for model in models:
        model.config.pad_token_id = tokenizer.pad_token_id
    theirs_model, ours_model = models
    optimize_for_training(ours_model)
    args = _args(RewardConfig, tmp_path)
    common = dict(args=args, processing_class=tokenizer, train_dataset=data)
    theirs = _trainer_class()(model=theirs_model, **common)
    collator = PackedReward.collator(tokenizer.pad_token_id, 64)
    ours = _trainer_class()(model=ours_model, data_collator=collator, **common)
    PackedReward.attach(ours)
    _perturb_adapter(theirs_model, ours_model)  # LoRA B and the score head, alike
    padded, packed = theirs.data_collator(examples[:2]), ours.data_collator(examples[:2])

    theirs_model.train(), ours_model.train()
    with torch.no_grad():
        rewards = theirs_model(
            input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]
        ).logits.squeeze(-1)
        torch.testing.assert_close(sequence_rewards(ours_model, packed), rewards, **TOL)
    theirs_loss = theirs.compute_loss(theirs_model, padded)
    ours_loss = ours.compute_loss(ours_model, packed)
    torch.testing.assert_close(ours_loss, theirs_loss, **TOL)
    theirs_loss.backward(), ours_loss.backward()
    _assert_same_grads(_grads(ours_model), _grads(theirs_model))


# --- runs: the packed paths are used, tokens/s is logged for every stage ---------------------


@pytest.fixture
def pairs_file(tmp_path):
    records = [
        {"instruction": f"Is {i} a number?", "chosen": "yes it is", "rejected": "no"}
        for i in range(8)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize("stage", ["dpo", "kto", "orpo", "rm", "simpo", "pt"])
def test_every_stage_logs_tokens_per_second_and_preference_stages_train_packed(
    stage, tmp_path, tiny_model_dir, pairs_file, monkeypatch
):
    import transformers

    collators = []
    original = transformers.Trainer.train

    def spy(self, *args, **kwargs):
        collators.append(type(self.data_collator).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "train", spy)
    data = pairs_file
    if stage == "pt":
        data = tmp_path / "text.jsonl"
        data.write_text(
            "".join(json.dumps({"text": f"{i} is a number " * 6}) + "\n" for i in range(12))
        )
    config = run_config(
        tmp_path, tiny_model_dir, data, stage, f"train.stage={stage}", "train.max_steps=2",
        "train.batch_size=2", "data.cutoff_len=32", "train.logging_steps=1",
    )  # fmt: skip
    result = train_run(config)
    logged = [m for m in read_jsonl(result.run.metrics_path) if "loss" in m]
    assert len(logged) == 2 and all(m["tokens_per_s"] > 0 for m in logged)
    assert logged[1]["tokens"] > logged[0]["tokens"] > 0
    packed = {
        "dpo": "PackedPairs",
        "kto": "PackedKTORows",
        "orpo": "PackedORPOPairs",
        "rm": "PackedRewardPairs",
    }
    if stage in packed:
        assert collators == [packed[stage]]


def test_packed_dpo_counts_the_same_tokens_as_trls_batches():
    examples = _examples(50, n=2)
    batch = PackedPairs()(examples)
    real = sum(
        2 * len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in examples
    )
    assert packed_tokens(batch) == real > batch["input_ids"].numel()  # the prompts once
    assert pack_sequences([[1, 2], [3]])["ends"].tolist() == [1, 2]
