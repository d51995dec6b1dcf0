"""Concurrent streaming against one-at-a-time streaming through the real server.

Starts `tunesmith serve` (embedded SmolLM2-135M-Instruct) as a subprocess on loopback twice:
  shared batch:   serve.batch_size=B, C concurrent streaming clients (default 32 and 32)
  one-at-a-time:  serve.batch_size=1, one streaming client
Both phases send the same requests (C x --rounds chat prompts, greedy, stream=True, max_tokens
--max-tokens); each client sends its next request when its stream ends. Reported per phase:
wall seconds, generated tokens/s (the streamed text re-tokenized), p50/p95 time to first text
and to the end of the stream, the largest batch, the server's peak RSS; then the speedup and
how many streamed texts equal their one-at-a-time text (greedy: all should).

    .venv/bin/python benchmarks/serve_streams.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
import serve_load
from serve_load import free_port, peak_rss_mb, wait_ready

# serve_load's prompts and eight more, so 32 clients send 16 distinct prompts
PROMPTS = [
    *serve_load.PROMPTS,
    "Why is the sky blue?",
    "Name three fruits.",
    "What is a prime number?",
    "How many legs does a spider have?",
    "Write a haiku about rain.",
    "What is the boiling point of water?",
    "Suggest a name for a cat.",
    "What does a CPU do?",
]


async def stream_one(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> dict:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    started, first, text, status = time.perf_counter(), None, "", 0
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            status = response.status_code
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    status = 500
                    continue
                piece = event["choices"][0]["delta"].get("content") or ""
                if piece and first is None:
                    first = time.perf_counter() - started
                text += piece
    except httpx.HTTPError:
        status = 0
    return {"status": status, "text": text, "ttft": first, "latency": time.perf_counter() - started}


async def client_loop(client, url: str, jobs: list[tuple[int, str]], max_tokens: int, out: dict):
    for key, prompt in jobs:
        out[key] = await stream_one(client, url, prompt, max_tokens)


async def load(url: str, plan: list[list[tuple[int, str]]], max_tokens: int) -> tuple[dict, float]:
    results: dict = {}
    limits = httpx.Limits(max_connections=len(plan) + 4)
    async with httpx.AsyncClient(timeout=1800, limits=limits) as client:
        started = time.monotonic()
        await asyncio.gather(
            *(client_loop(client, url, jobs, max_tokens, results) for jobs in plan)
        )
        return results, time.monotonic() - started


def phase(name: str, batch_size: int, plan: list, max_tokens: int, tokenizer) -> tuple[dict, dict]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = serve_load.start_server(port, batch_size, max_queue=max(256, 2 * len(plan)))
    try:
        wait_ready(url, proc)
        asyncio.run(load(url, [[(-1, PROMPTS[0])]], 8))  # warm-up
        load_before = os.getloadavg()[0]
        results, elapsed = asyncio.run(load(url, plan, max_tokens))
        load_after = os.getloadavg()[0]
        rss = peak_rss_mb(proc.pid)
        health = httpx.get(f"{url}/health", timeout=5).json()
    finally:
        proc.terminate()
        proc.wait(60)
    ok = [r for r in results.values() if r["status"] == 200]
    tokens = sum(len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in ok)
    ttft = sorted(r["ttft"] for r in ok if r["ttft"] is not None)
    latency = sorted(r["latency"] for r in ok)

    def pct(values: list[float], q: float) -> float | None:
        return round(values[int(q * (len(values) - 1))], 2) if values else None

    row = {
        "phase": name,
        "batch_size": batch_size,
        "clients": len(plan),
        "streams": len(ok),
        "failed": len(results) - len(ok),
        "seconds": round(elapsed, 1),
        "generated_tokens": tokens,
        "generated_tokens_per_s": round(tokens / elapsed, 1),
        "p50_first_text_s": round(statistics.median(ttft), 2) if ttft else None,
        "p95_first_text_s": pct(ttft, 0.95),
        "p50_stream_s": round(statistics.median(latency), 2) if latency else None,
        "p95_stream_s": pct(latency, 0.95),
        "largest_batch": health.get("largest_batch"),
        "server_peak_rss_mb": round(rss, 1),
        "load_avg_1m_before_after": [round(load_before, 2), round(load_after, 2)],  # other work
    }
    return row, {k: r["text"] for k, r in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="streams per client")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from tunesmith.models.resolve import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct").path)
    requests = [
        (k * args.rounds + r, PROMPTS[(k * args.rounds + r) % len(PROMPTS)])
        for k in range(args.clients)
        for r in range(args.rounds)
    ]
    shared_plan = [requests[k * args.rounds : (k + 1) * args.rounds] for k in range(args.clients)]
    print(f"cpus: {os.cpu_count()}; {len(requests)} streams, max_tokens {args.max_tokens}, greedy")
    shared, shared_texts = phase(
        "shared batch", args.batch_size, shared_plan, args.max_tokens, tokenizer
    )
    alone, alone_texts = phase("one-at-a-time", 1, [requests], args.max_tokens, tokenizer)
    same = sum(shared_texts.get(k) == alone_texts.get(k) for k, _ in requests)
    for row in (shared, alone):
        print(json.dumps(row))
    speedup = shared["generated_tokens_per_s"] / max(alone["generated_tokens_per_s"], 1e-9)
    print(f"shared / one-at-a-time generated tokens/s: {speedup:.2f}x (target >= 3x)")
    print(f"identical greedy text: {same}/{len(requests)}")
    for k, _ in requests:
        if shared_texts.get(k) != alone_texts.get(k):
            print(f"  stream {k}: {shared_texts.get(k)!r} != {alone_texts.get(k)!r}")
    if args.json:
        result = {"phases": [shared, alone], "speedup": speedup, "identical": same}
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
