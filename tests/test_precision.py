"""train.precision auto on the CPU (models/precision.py): bf16 autocast only where a probe finds
it faster and the loss holds; the choice cached per host and shape, kept in the run folder."""

from __future__ import annotations

import json

import pytest
import torch

from tunesmith.models import precision


class Probes(list):
    """The shapes probed so far; `timings`: what the (faked) probe measures."""

    def __init__(self):
        super().__init__()
        self.timings = {"fp32": 2.0, "bf16": 1.0}


@pytest.fixture
def probe_here(monkeypatch, tmp_path):
    """The probe's gates opened for a tiny model (hidden 32), the cache in tmp_path, and the
    timings as the test says: returns a list that counts the probes run."""
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(precision.ENV, raising=False)
    monkeypatch.setattr(precision, "MIN_HIDDEN", 0)
    monkeypatch.setattr(precision, "bf16_supported", lambda: True)
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    probes = Probes()
    timings = probes.timings

    def fake_probe(config, shape, repeats=precision.REPEATS):
        probes.append(shape)
        return dict(timings)

    monkeypatch.setattr(precision, "probe_seconds", fake_probe)
    return probes


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def test_auto_stays_fp32_when_bf16_is_not_faster(probe_here, tiny, monkeypatch):
    probe_here.timings.update(fp32=1.0, bf16=0.95)  # 1.05x: under the margin
    checked = []
    monkeypatch.setattr(precision, "loss_check", lambda *a: checked.append(1))
    choice = precision.choose(*tiny, "auto", tokens=64)
    assert choice.precision == "fp32"
    assert choice.speedup == pytest.approx(1.0 / 0.95, rel=1e-3)
    assert "1.05x fp32 < 1.15x" in choice.line()
    assert checked == []  # no loss check when the timing already says no


def test_auto_picks_bf16_when_faster_and_the_loss_holds(probe_here, tiny):
    choice = precision.choose(*tiny, "auto", tokens=64)  # the real loss check on the model
    assert choice.precision == "bf16", choice.line()
    assert choice.speedup == 2.0
    assert choice.loss["fp32"] > 0 and choice.loss["relative_diff"] <= precision.LOSS_TOLERANCE
    assert choice.loss["bf16"] != choice.loss["fp32"]  # autocast really ran in bf16
    assert "2.00x fp32" in choice.line() and "loss within" in choice.line()


def test_a_failing_loss_check_keeps_fp32(probe_here, tiny, monkeypatch):
    moved = {"fp32": 2.0, "bf16": 2.1, "relative_diff": 0.05}
    monkeypatch.setattr(precision, "loss_check", lambda *a: moved)
    choice = precision.choose(*tiny, "auto", tokens=64)
    assert choice.precision == "fp32"
    assert "loss moves 5.00% > 1%" in choice.reason


def test_the_cached_probe_is_reused_and_keyed_by_torch_and_shape(probe_here, tiny, monkeypatch):
    first = precision.choose(*tiny, "auto", tokens=64)
    again = precision.choose(*tiny, "auto", tokens=64)
    assert len(probe_here) == 1 and not first.cached and again.cached
    assert "(cached)" in again.reason
    cache = json.loads(precision._cache_path().read_text())
    assert [entry["shape"]["tokens"] for entry in cache.values()] == [64]
    precision.choose(*tiny, "auto", tokens=128)  # another shape: probed afresh
    assert len(probe_here) == 2
    monkeypatch.setattr(precision.torch, "__version__", "99.0.0")  # another torch
    precision.choose(*tiny, "auto", tokens=64)
    assert len(probe_here) == 3


def test_explicit_precision_and_the_switch_are_obeyed(probe_here, tiny, monkeypatch):
    assert precision.choose(*tiny, "fp32", tokens=64).precision == "fp32"
    assert precision.choose(*tiny, "bf16", tokens=64).precision == "bf16"
    monkeypatch.setenv(precision.ENV, "0")
    off = precision.choose(*tiny, "auto", tokens=64)
    assert off.precision == "fp32" and precision.ENV in off.reason
    assert probe_here == []  # none of them probed


def test_several_processes_take_the_cache_or_fp32(probe_here, tiny):
    alone = precision.choose(*tiny, "auto", tokens=64, processes=2)
    assert alone.precision == "fp32" and probe_here == []
    precision.choose(*tiny, "auto", tokens=64)  # one process probes once
    assert precision.choose(*tiny, "auto", tokens=64, processes=2).precision == "bf16"


def test_the_real_probe_times_the_models_own_layer_and_leaves_the_rng(tiny, one_thread):
    model, _ = tiny
    shape = precision.probe_shape(model.config, tokens=4096)
    assert (shape["hidden"], shape["intermediate"], shape["kv_heads"]) == (32, 64, 2)
    assert shape["tokens"] == precision.PROBE_TOKENS  # capped
    shape["tokens"] = 32
    rng = torch.random.get_rng_state()
    seconds = precision.probe_seconds(model.config, shape, repeats=1)
    assert torch.equal(torch.random.get_rng_state(), rng)  # the run's seeded RNG untouched
    assert set(seconds) == {"fp32", "bf16", "speedup"} and min(seconds.values()) > 0
    assert precision.decide(seconds, False, lambda: {"relative_diff": 0}).speedup == pytest.approx(
        seconds["speedup"], abs=1e-3
    )  # the rounds' paired ratio decides, not the ratio of the medians


@pytest.mark.parametrize("requested", ["auto", "fp32"])
def test_the_run_folder_records_the_choice_and_trains_in_it(
    requested, probe_here, tmp_path, tiny_model_dir, alpaca_file, one_thread
):
    """auto chose bf16 (the probe, faked: 2x): the run trains under bf16 autocast (every linear
    outputs bf16), precision.json and summary.json say so; fp32 set in the config is kept."""
    from helpers import train_tiny_recording_dtypes

    result, dtypes = train_tiny_recording_dtypes(
        tmp_path, tiny_model_dir, alpaca_file, requested,
        "train.max_steps=1", f"train.precision={requested}", "train.optimize=true",
    )  # fmt: skip
    want = "bf16" if requested == "auto" else "fp32"
    recorded = json.loads((result.run.root / "precision.json").read_text())
    assert recorded["precision"] == want and recorded["requested"] == requested
    assert result.summary["precision"]["precision"] == want
    assert dtypes == {torch.bfloat16 if want == "bf16" else torch.float32}


def test_a_resumed_run_keeps_the_interrupted_runs_choice(probe_here, tiny, tmp_path):
    from tunesmith.config.load import load_config
    from tunesmith.runs.folder import RunFolder
    from tunesmith.train.arguments import settle_precision

    config = load_config(None, [f"output.dir={tmp_path}", "output.name=r"])
    run = RunFolder.create(config.output, "test")
    first, record = settle_precision(config, *tiny, run, resume=False)
    assert first.train.precision == "bf16" and record["precision"] == "bf16"
    probe_here.timings.update(fp32=1.0, bf16=1.0)  # the host changed its mind since
    precision._cache_path().unlink()
    resumed, record = settle_precision(config, *tiny, run, resume=True)
    assert resumed.train.precision == "bf16"
    assert record["reason"].startswith("as the interrupted run chose")
    assert config.train.precision == "auto"  # the config itself is not changed


def test_the_planner_prices_autocast_copies_where_auto_picks_bf16(probe_here, tiny, tmp_path):
    from tunesmith.config.load import load_config
    from tunesmith.plan.estimate import precision_for

    model, tokenizer = tiny
    config = load_config(None, [f"output.dir={tmp_path}", "data.cutoff_len=16"])
    before = precision_for(config, "cpu", model_config=model.config)
    assert (before.compute_bytes, before.autocast_copies) == (4, False)  # not probed: fp32
    precision.choose(model, tokenizer, "auto", tokens=config.train.batch_size * 16)
    after = precision_for(config, "cpu", model_config=model.config)
    assert (after.compute_bytes, after.autocast_copies) == (2, True)


# --- generation -------------------------------------------------------------------------------

PROMPTS = [[{"role": "user", "content": "hello who are you?"}], [{"role": "user", "content": "hi"}]]


def fake_engine(monkeypatch, replies: dict, seconds: dict):
    """TransformersEngine.generate answering `replies[dtype]` after `seconds[dtype]`."""
    import time

    from tunesmith.models import engine

    def generate(self, conversations, params, cancelled=None):
        dtype = "bf16" if self.model.dtype == torch.bfloat16 else "fp32"
        time.sleep(seconds[dtype])
        return [engine.Completion(text, "stop", 1, 1) for text in replies[dtype]]

    monkeypatch.setattr(engine.TransformersEngine, "generate", generate)


def test_generation_takes_bf16_only_where_greedy_replies_stay_equal(tiny, monkeypatch):
    model, tokenizer = tiny
    fake_engine(monkeypatch, {"fp32": ["a", "b"], "bf16": ["a", "c"]}, {"fp32": 0.05, "bf16": 0})
    differ = precision.generation_choice(model, tokenizer, PROMPTS)
    assert differ.precision == "fp32" and "differ from fp32 on 1/2 prompts" in differ.reason
    fake_engine(monkeypatch, {"fp32": ["a", "b"], "bf16": ["a", "b"]}, {"fp32": 0.05, "bf16": 0})
    assert precision.generation_choice(model, tokenizer, PROMPTS).precision == "bf16"
    fake_engine(monkeypatch, {"fp32": ["a", "b"], "bf16": ["a", "b"]}, {"fp32": 0.0, "bf16": 0.05})
    slower = precision.generation_choice(model, tokenizer, PROMPTS)
    assert slower.precision == "fp32" and "< 1.15x" in slower.reason
    assert model.dtype == torch.float32  # the model itself is left as it was


def test_generation_check_runs_the_real_engine(tiny, one_thread):
    model, tokenizer = tiny
    choice = precision.generation_choice(model, tokenizer, PROMPTS, max_new_tokens=4)
    assert choice.precision in ("fp32", "bf16") and min(choice.seconds.values()) > 0
    assert model.dtype == torch.float32
