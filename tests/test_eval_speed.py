"""Speed measurement with a fake engine and clock: percentiles, tokens/s, sizes on disk."""

from __future__ import annotations

import pytest

from tunesmith.evaluation.speed import measure_speed, peak_rss_mb, size_on_disk
from tunesmith.models.engine import Completion, GenerationParams


class FakeEngine:
    """Each request 'takes' the next duration on a fake clock and yields 10 tokens."""

    def __init__(self, durations: list[float]):
        self.durations, self.now, self.calls = list(durations), 0.0, 0

    def clock(self) -> float:
        return self.now

    def generate(self, conversations, params):
        self.now += self.durations[self.calls]
        self.calls += 1
        return [Completion("ok", "stop", 5, 10) for _ in conversations]


def test_latency_percentiles_and_tokens_per_second_by_hand():
    # warm-up takes 100 s and is not counted; then 1, 2, 3, 4, 10 seconds
    engine = FakeEngine([100.0, 1.0, 2.0, 3.0, 4.0, 10.0])
    prompts = [[{"role": "user", "content": str(i)}] for i in range(5)]
    result = measure_speed(engine, prompts, GenerationParams(max_new_tokens=4), clock=engine.clock)
    assert engine.calls == 6 and result["requests"] == 5
    assert result["latency_p50_s"] == 3.0
    assert result["latency_p95_s"] == pytest.approx(4.0 + 0.8 * 6.0)  # linear between 4 and 10
    assert result["latency_mean_s"] == 4.0
    assert result["tokens_per_s"] == pytest.approx(50 / 20)
    assert result["cuda_peak_mb"] is None  # no GPU here


def test_peak_memory_is_at_least_what_the_process_holds_now():
    with open("/proc/self/statm") as handle:
        resident_pages = int(handle.read().split()[1])
    import os

    now_mb = resident_pages * os.sysconf("SC_PAGE_SIZE") / 1024**2
    assert peak_rss_mb() >= now_mb * 0.99


def test_size_on_disk_counts_weight_files_only(tmp_path):
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir(), adapter.mkdir()
    (base / "model.safetensors").write_bytes(b"x" * 1000)
    (base / "tokenizer.json").write_bytes(b"x" * 500)
    (adapter / "adapter_model.safetensors").write_bytes(b"x" * 200)
    (adapter / "adapter_config.json").write_bytes(b"x" * 50)
    assert size_on_disk(base, adapter, None) == 1200
    assert size_on_disk(base / "model.safetensors") == 1000
    assert size_on_disk(tmp_path / "missing") == 0
