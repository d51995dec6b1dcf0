"""A few real training steps on the embedded SmolLM2-135M-Instruct (slow, runs in CI)."""

from __future__ import annotations

import json

import pytest

from tunesmith.config.load import load_config
from tunesmith.runs.folder import RunFolder
from tunesmith.train.sft import run_sft
from tunesmith.workflows.quickstart import DATA


@pytest.mark.slow
def test_lora_steps_on_embedded_smollm2(tmp_path):
    data = tmp_path / "identity.jsonl"
    text = (DATA / "identity_train.jsonl").read_text(encoding="utf-8")
    data.write_text(text.replace("{{name}}", "Tessa").replace("{{author}}", "Acme"), "utf-8")
    config = load_config(
        None,
        [
            f"data.train={data}",
            "data.max_samples=8",
            "method.r=8",
            "train.max_steps=6",
            "train.batch_size=4",
            "train.learning_rate=2e-3",
            "train.lr_scheduler=constant",
            f"output.dir={tmp_path}",
            "output.name=smol",
        ],
    )
    result = run_sft(config, RunFolder.create(config.output, "slow"))
    losses = [json.loads(x)["loss"] for x in result.run.metrics_path.read_text().splitlines()]
    assert len(losses) == 6
    # Two passes over the same 8 records: the second pass must fit them better.
    assert sum(losses[4:]) < sum(losses[:2])
    summary = json.loads((result.run.root / "summary.json").read_text())
    assert summary["total_parameters"] > 134_000_000
    assert summary["data"]["examples"] == 8
    assert (result.artifact / "adapter_model.safetensors").is_file()
