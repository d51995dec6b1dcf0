"""Preference stages on the tiny Llama: the DPO loss by hand, margins that grow, data formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import shared_file
from helpers import run_config, train_run
from typer.testing import CliRunner

from tunesmith.data.preference import (
    build_preference_data,
    read_preference_records,
    split_ids,
)
from tunesmith.data.registry import preference_sources
from tunesmith.train.preference import frozen_copy
from tunesmith.utils.errors import DataError


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    """Trivially separable: the chosen answer is always 'yes', the rejected one 'no'."""
    records = [
        {"instruction": f"Is {i} a number?", "chosen": "yes", "rejected": "no"} for i in range(8)
    ]
    return write_jsonl(tmp_path / "pairs.jsonl", records)


# --- data ------------------------------------------------------------------------------


def test_completion_is_the_rendered_reply_after_the_generation_prompt(tiny_tokenizer):
    prompt = [{"role": "user", "content": "hi"}]
    prompt_ids, completion_ids, truncated = split_ids(tiny_tokenizer, prompt, "hello", 64)
    assert (
        tiny_tokenizer.decode(prompt_ids)
        == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tiny_tokenizer.decode(completion_ids) == "hello<|im_end|>\n"
    assert not truncated
    _, cut, truncated = split_ids(tiny_tokenizer, prompt, "hello " * 40, 64, "keep_prompt")
    assert len(cut) == 64 - len(prompt_ids) and truncated


def test_formats_normalise_to_the_same_pair(tmp_path):
    alpaca = {"instruction": "Say hi", "input": "", "chosen": "hi", "rejected": "no"}
    sharegpt = {
        "conversations": [{"from": "human", "value": "Say hi"}],
        "chosen": {"from": "gpt", "value": "hi"},
        "rejected": {"from": "gpt", "value": "no"},
    }
    openai = {"messages": [{"role": "user", "content": "Say hi"}], "chosen": "hi", "rejected": "no"}
    for i, record in enumerate((alpaca, sharegpt, openai)):
        (pair,), _ = read_preference_records([write_jsonl(tmp_path / f"{i}.jsonl", [record])])
        assert (pair.prompt, pair.chosen, pair.rejected) == (
            [{"role": "user", "content": "Say hi"}],
            "hi",
            "no",
        )


def test_bad_record_names_file_and_line_or_is_rejected(tmp_path, tiny_tokenizer):
    path = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"instruction": "a", "chosen": "b", "rejected": "c"}, {"instruction": "a", "chosen": "b"}],
    )
    with pytest.raises(DataError, match=rf"{path.name}:2: .*'rejected'"):
        read_preference_records([path])
    rejects = []
    records, stats = read_preference_records(
        [path], on_error="skip", reject=lambda *args: rejects.append(args)
    )
    assert len(records) == 1 and stats == {"read": 2, "rejected": 1}
    assert rejects[0][:2] == (str(path), 2)


def test_llamafactory_demo_files_load_through_the_registry(tiny_tokenizer):
    from tunesmith.config.schema import DataConfig

    dpo, kto_file = shared_file("dpo_en_demo.json"), shared_file("kto_en_demo.json")
    raw = json.loads(dpo.read_text(encoding="utf-8"))
    pairs, stats = read_preference_records([dpo])
    assert stats == {"read": len(raw), "rejected": 0}
    assert pairs[5].chosen == raw[5]["chosen"]["value"]
    assert pairs[5].prompt[-1]["content"] == raw[5]["conversations"][-1]["value"]

    kto_raw = json.loads(kto_file.read_text(encoding="utf-8"))
    kto, _ = read_preference_records([kto_file])
    assert [r.label for r in kto] == [r["label"] for r in kto_raw]
    assert kto[0].completion == kto_raw[0]["messages"][-1]["content"]

    cfg = DataConfig(
        registry=str(shared_file("dataset_info.json")),
        dataset=["kto_en_demo", "dpo_en_demo"],
        cutoff_len=1024,
        max_samples=40,  # the first 40 KTO records: one example each, or a reject
        on_error="skip",
    )
    rejects = []
    data = build_preference_data(
        preference_sources(cfg, kto=True), cfg, tiny_tokenizer, False, lambda *a: rejects.append(a)
    )
    assert data.stats["read"] == len(raw) + len(kto_raw)
    assert data.stats["examples"] == 40 and rejects == []  # long ones truncated, not rejected
    assert data.stats["desirable"] + data.stats["undesirable"] == data.stats["examples"]


# --- long inputs: the truncation policy ------------------------------------------------

ZH_SYSTEM = "你是一位耐心的中文助教，回答要准确。"


def _zh_turn(i: int, n: int) -> str:
    return f"第{i}轮：" + "请详细解释机器学习中的过拟合问题以及如何避免它。" * n


def _long_zh_pair(turns: int = 4, n: int = 1, answer: int = 2) -> dict:
    """A sharegpt-style multi-turn Chinese preference record, over a 256-token cutoff."""
    conversations = []
    for i in range(turns):
        conversations.append({"from": "human", "value": _zh_turn(i, n)})
        if i < turns - 1:
            conversations.append({"from": "gpt", "value": "好的，" + "我来解释。" * n})
    return {
        "system": ZH_SYSTEM,
        "conversations": conversations,
        "chosen": {"from": "gpt", "value": "选择的回答：" + "正则化可以减少过拟合。" * answer},
        "rejected": {"from": "gpt", "value": "拒绝的回答：" + "多训练几轮就好。" * answer},
    }


def test_budget_follows_llamafactory_with_a_floor():
    from tunesmith.data.preference import budget

    assert budget(500, 50, 256, "split") == (206, 50)  # a short answer is kept whole
    assert budget(60, 500, 256, "split") == (60, 196)  # a short prompt is kept whole
    assert budget(300, 300, 256, "split") == (128, 128)  # both long: in proportion
    assert budget(10_000, 200, 256, "split") == (192, 64)  # the answer's floor: 256 // 4
    assert budget(300, 300, 256, "keep_prompt") == (192, 64)  # the floor again
    assert budget(100, 300, 256, "keep_prompt") == (100, 156)


@pytest.mark.parametrize("truncation", ["split", "keep_prompt"])
def test_long_chinese_multi_turn_pairs_are_truncated_not_rejected(
    tmp_path, tiny_tokenizer, truncation
):
    from tunesmith.config.schema import DataConfig

    records = [_long_zh_pair(), _long_zh_pair(turns=1, n=8), _long_zh_pair(answer=10)]
    records.append({"instruction": "短问题", "chosen": "是", "rejected": "否"})  # fits
    path = write_jsonl(tmp_path / "zh.jsonl", records)
    cfg = DataConfig(train=[str(path)], cutoff_len=256)
    data = build_preference_data(cfg.train, cfg, tiny_tokenizer, True, None, truncation)
    assert data.stats["examples"] == 4 and data.stats["rejected"] == 0
    assert data.stats["truncated"] == 3
    for example, record in zip(data.examples, records, strict=True):
        prompt = tiny_tokenizer.decode(example["prompt_ids"])
        for key in ("chosen", "rejected"):
            assert 0 < len(example["prompt_ids"]) + len(example[f"{key}_ids"]) <= 256
            answer = record[key] if isinstance(record[key], str) else record[key]["value"]
            assert tiny_tokenizer.decode(example[f"{key}_ids"]).startswith(answer[:2])
        assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")  # still a prompt
        if "system" in record:
            assert prompt.startswith(f"<|im_start|>system\n{ZH_SYSTEM}<|im_end|>")
    first = tiny_tokenizer.decode(data.examples[0]["prompt_ids"])
    assert "第0轮" not in first and _zh_turn(3, 1) in first  # earliest turns went first
    alone = tiny_tokenizer.decode(data.examples[1]["prompt_ids"])
    assert "第0轮" not in alone and "避免它。<|im_end|>" in alone  # the end of the user turn
    assert tiny_tokenizer.decode(data.examples[3]["chosen_ids"]) == "是<|im_end|>\n"


def test_long_kto_examples_are_truncated(tmp_path, tiny_tokenizer):
    from tunesmith.config.schema import DataConfig

    messages = [{"role": "system", "content": ZH_SYSTEM}]
    for i in range(5):
        messages += [
            {"role": "user", "content": _zh_turn(i, 5)},
            {"role": "assistant", "content": "回答" * 40},
        ]
    path = write_jsonl(tmp_path / "kto.jsonl", [{"messages": messages, "label": True}])
    cfg = DataConfig(train=[str(path)], cutoff_len=96)
    data = build_preference_data(cfg.train, cfg, tiny_tokenizer, False)
    (example,) = data.examples
    assert data.stats["truncated"] == 1 and example["label"] is True
    assert len(example["prompt_ids"]) + len(example["completion_ids"]) <= 96


def test_empty_answer_is_still_rejected(tmp_path, tiny_tokenizer):
    from tunesmith.config.schema import DataConfig

    path = write_jsonl(
        tmp_path / "p.jsonl",
        [_long_zh_pair(), {**_long_zh_pair(), "chosen": {"from": "gpt", "value": " "}}],
    )
    cfg = DataConfig(train=[str(path)], cutoff_len=128, on_error="skip")
    rejects = []
    data = build_preference_data(cfg.train, cfg, tiny_tokenizer, True, lambda *a: rejects.append(a))
    assert data.stats["examples"] == 1 and [r[1] for r in rejects] == [2]


def test_committed_lf_preference_fixtures_fit_a_tiny_cutoff(tiny_tokenizer):
    from tunesmith.config.schema import DataConfig

    folder = Path(__file__).parent / "fixtures" / "llamafactory"
    cfg = DataConfig(
        registry=str(folder / "dataset_info.json"), dataset=["dpo_mini"], cutoff_len=24
    )
    data = build_preference_data(preference_sources(cfg), cfg, tiny_tokenizer, True)
    assert data.stats["rejected"] == 0 and data.stats["examples"] == data.stats["read"] > 0
    assert data.stats["truncated"] > 0
    for e in data.examples:
        assert len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"])) <= 24


@pytest.mark.parametrize("name", ["dpo_zh_demo", "dpo_en_demo"])
def test_llamafactory_dpo_demos_train_every_record_at_cutoff_256(tiny_tokenizer, name):
    from tunesmith.config.schema import DataConfig

    info = shared_file("dataset_info.json")
    shared_file(json.loads(info.read_text(encoding="utf-8"))[name]["file_name"])
    cfg = DataConfig(registry=str(info), dataset=[name], cutoff_len=256)  # on_error: stop
    data = build_preference_data(preference_sources(cfg), cfg, tiny_tokenizer, True)
    assert data.stats["rejected"] == 0 and data.stats["examples"] == data.stats["read"]
    assert data.stats["truncated"] > 0
    for e in data.examples:
        assert len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"])) <= 256


# --- the DPO loss ----------------------------------------------------------------------


def _sequence_logp(model, prompt: list[int], answer: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt + answer])
    logp = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    targets = ids[0, 1:]
    picked = logp.gather(-1, targets[:, None])[:, 0]
    return picked[len(prompt) - 1 :].sum()  # position t predicts token t + 1


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_loss_equals_the_formula_with_reference_log_probs(tmp_path, tiny_tokenizer, loss_type):
    from conftest import build_tiny_llama
    from trl import DPOConfig

    from tunesmith.train.preference import _dpo_class

    reference = build_tiny_llama(len(tiny_tokenizer))
    policy = frozen_copy(reference)
    with torch.no_grad():  # a policy that differs from its reference
        for param in policy.parameters():
            param.add_(0.05 * torch.randn_like(param))
    policy.requires_grad_(True)
    examples = [
        {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9, 10], "rejected_ids": [11, 12]},
        {"prompt_ids": [13, 14], "chosen_ids": [15], "rejected_ids": [16, 17, 18, 19]},
    ]
    beta = 0.3
    args = DPOConfig(
        output_dir=str(tmp_path), beta=beta, loss_type=[loss_type], use_cpu=True, report_to=[]
    )
    from datasets import Dataset

    trainer = _dpo_class()(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(examples),
        processing_class=tiny_tokenizer,
    )
    batch = trainer.data_collator(examples)
    policy.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        expected = []
        for e in examples:
            lengths = torch.tensor([len(e["chosen_ids"]), len(e["rejected_ids"])])
            c, r = (
                _sequence_logp(policy, e["prompt_ids"], e[k])
                for k in ("chosen_ids", "rejected_ids")
            )
            rc, rr = (
                _sequence_logp(reference, e["prompt_ids"], e[k])
                for k in ("chosen_ids", "rejected_ids")
            )
            delta = (c - rc) - (r - rr)
            if loss_type == "sigmoid":
                expected.append(-F.logsigmoid(beta * delta))
            elif loss_type == "hinge":
                expected.append(torch.relu(1 - beta * delta))
            else:  # IPO on per-token averages, target margin 1 / (2 beta)
                avg = (c - rc) / lengths[0] - (r - rr) / lengths[1]
                expected.append((avg - 1 / (2 * beta)) ** 2)
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-4)


# --- training --------------------------------------------------------------------------


def _config(tmp_path, model_dir, data, stage, *overrides):
    return run_config(
        tmp_path,
        model_dir,
        data,
        stage,
        f"data.eval={data}",
        f"train.stage={stage}",
        "train.max_steps=12",
        "train.learning_rate=5e-3",
        "data.cutoff_len=64",
        *overrides,
    )


@pytest.mark.parametrize(
    ("stage", "method"),
    [("dpo", "lora"), ("dpo", "full"), ("orpo", "lora"), ("simpo", "lora"), ("kto", "lora")],
)
def test_training_raises_the_chosen_vs_rejected_margin(
    tmp_path, tiny_model_dir, pairs_file, stage, method, matrix_cell
):
    matrix_cell(method, "trains", "yes", stage=stage)
    config = _config(tmp_path, tiny_model_dir, pairs_file, stage, f"method.type={method}")
    result = train_run(config)
    rewards = result.summary["rewards"]
    before, after = rewards["held_out_before"], rewards["held_out_after"]
    assert after["rewards/margins"] > before["rewards/margins"] + 0.01
    if stage != "kto":  # KTO logs no pairwise accuracy
        assert after["rewards/accuracies"] == 1.0
    assert result.artifact.is_dir()
    if method == "lora":  # TRL's reference copy of the adapter is not saved
        saved = json.loads((result.artifact / "adapter_config.json").read_text())
        assert saved["r"] == config.method.r
        assert not (result.artifact / "ref").exists()


def test_cli_trains_dpo_end_to_end(tmp_path, tiny_model_dir, pairs_file, monkeypatch):
    import yaml

    from tunesmith.cli.main import app

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = {
        "model": {"name_or_path": str(tiny_model_dir)},
        "method": {"type": "lora", "r": 4},
        "data": {"train": [str(pairs_file)], "cutoff_len": 64},
        "train": {"stage": "dpo", "max_steps": 3, "batch_size": 4, "save_steps": 2},
        "output": {"dir": str(tmp_path / "runs"), "name": "cli-dpo"},
    }
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = CliRunner().invoke(app, ["train", str(path)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "cli-dpo"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stage"] == "dpo" and summary["steps"] == 3
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "checkpoints" / "checkpoint-2").is_dir()


def test_reward_model_learns_a_trivially_separable_preference(
    tmp_path, tiny_model_dir, pairs_file, matrix_cell
):
    matrix_cell("lora", "trains", "yes", stage="rm")
    from tunesmith.train.reward import RewardScorer

    config = _config(
        tmp_path, tiny_model_dir, pairs_file, "rm", "method.type=lora", "train.max_steps=15"
    )
    result = train_run(config)
    rewards = result.summary["rewards"]
    assert rewards["held_out_after"]["accuracy"] == 1.0
    assert rewards["held_out_after"]["margin"] > rewards["held_out_before"]["margin"]
    score = RewardScorer(result.run.root)  # the saved run loads back and ranks the same way
    prompt = [{"role": "user", "content": "Is 3 a number?"}]
    assert score(prompt, "yes") > score(prompt, "no")


def test_resumed_dpo_run_ends_where_an_uninterrupted_one_does(
    tmp_path, tiny_model_dir, pairs_file, matrix_cell
):
    matrix_cell("lora", "resumes", "yes", stage="dpo")

    def config(steps, name):
        return _config(
            tmp_path, tiny_model_dir, pairs_file, "dpo", f"train.max_steps={steps}",
            "train.save_steps=2", f"output.name={name}", "data.eval=[]",
        )  # fmt: skip

    whole = train_run(config(4, "whole"))
    train_run(config(2, "part"))
    resumed = train_run(config(4, "part"), resume=True)
    assert resumed.summary["resumed_from"].endswith("checkpoint-2")
    last = lambda r: r.summary["rewards"]["train"]["last"]  # noqa: E731
    assert last(resumed)["rewards/margins"] == pytest.approx(last(whole)["rewards/margins"])
