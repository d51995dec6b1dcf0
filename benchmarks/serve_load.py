"""Load test of `tunesmith serve`: batched serving against one-at-a-time serving.

Starts the server (embedded SmolLM2-135M-Instruct) as a subprocess on loopback twice:
  batched:        serve.batch_size=B, N concurrent clients (default 16 and 64)
  one-at-a-time:  serve.batch_size=1, one client
Each phase sends short chat prompts (max_tokens 32, greedy) for --duration seconds, then waits
for the requests in flight. Reported per phase: requests/s, p50/p95 latency, generated tokens/s,
4xx and 5xx counts, client-side failures, and the server's peak RSS (VmHWM).

    .venv/bin/python benchmarks/serve_load.py --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

PROMPTS = [
    "What is the capital of France?",
    "Give me one tip for learning Python.",
    "Name a primary color.",
    "Say hello in Spanish.",
    "What is 2 + 2?",
    "Describe the sea in five words.",
    "Who wrote Hamlet?",
    "What do bees make?",
]
TUNESMITH = Path(sys.executable).parent / "tunesmith"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(port: int, batch_size: int, max_queue: int) -> subprocess.Popen:
    args = [
        str(TUNESMITH), "serve", "model.name_or_path=smollm2-135m-instruct",
        f"serve.port={port}", f"serve.batch_size={batch_size}", f"serve.max_queue={max_queue}",
        "serve.model_name=smollm2", "serve.batch_wait_ms=10", "serve.request_timeout_s=1800",
    ]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("server did not start in time")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def client_loop(client: httpx.AsyncClient, url: str, stop_at: float, k: int, out: list):
    i = k
    while time.monotonic() < stop_at:
        body = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": 32,
            "temperature": 0,
        }
        i += 1
        started = time.perf_counter()
        try:
            response = await client.post(f"{url}/v1/chat/completions", json=body)
            tokens = response.json()["usage"]["completion_tokens"] if response.is_success else 0
            out.append((response.status_code, time.perf_counter() - started, tokens))
        except (httpx.HTTPError, ValueError, KeyError):
            out.append((0, time.perf_counter() - started, 0))


async def load(url: str, clients: int, duration: float) -> tuple[list, float]:
    results: list = []
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.monotonic()
        stop_at = started + duration
        await asyncio.gather(
            *(client_loop(client, url, stop_at, k, results) for k in range(clients))
        )
        return results, time.monotonic() - started


def phase(name: str, batch_size: int, clients: int, duration: float) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(port, batch_size, max_queue=max(256, clients * 2))
    try:
        wait_ready(url, proc)
        asyncio.run(load(url, 1, 3))  # warm-up: first-call allocations out of the numbers
        results, elapsed = asyncio.run(load(url, clients, duration))
        rss = peak_rss_mb(proc.pid)
        health = httpx.get(f"{url}/health", timeout=5).json()
    finally:
        proc.terminate()
        proc.wait(60)
    ok = [r for r in results if 200 <= r[0] < 300]
    latencies = sorted(r[1] for r in ok)
    tokens = sum(r[2] for r in ok)
    return {
        "phase": name,
        "batch_size": batch_size,
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": len(ok),
        "requests_per_s": round(len(ok) / elapsed, 2),
        "p50_latency_s": round(statistics.median(latencies), 2) if latencies else None,
        "p95_latency_s": round(latencies[int(0.95 * (len(latencies) - 1))], 2)
        if latencies
        else None,
        "generated_tokens_per_s": round(tokens / elapsed, 1),
        "errors_4xx": sum(400 <= r[0] < 500 for r in results),
        "errors_5xx": sum(r[0] >= 500 for r in results),
        "client_failures": sum(r[0] == 0 for r in results),
        "largest_batch": health.get("largest_batch"),
        "server_peak_rss_mb": round(rss, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60, help="seconds of load per phase")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, torch threads: default; duration {args.duration}s per phase")
    rows = [
        phase("batched", args.batch_size, args.clients, args.duration),
        phase("one-at-a-time", 1, 1, args.duration),
    ]
    for row in rows:
        print(json.dumps(row))
    speedup = rows[0]["generated_tokens_per_s"] / max(rows[1]["generated_tokens_per_s"], 1e-9)
    print(f"batched / one-at-a-time generated tokens/s: {speedup:.2f}x (target >= 3x, zero 5xx)")
    if args.json:
        args.json.write_text(json.dumps({"phases": rows, "speedup": speedup}, indent=2))


if __name__ == "__main__":
    main()
