"""`tunesmith improve demo [--out DIR]`: one improvement cycle on a served SmolLM2 assistant.

1. v1, the assistant in production: a LoRA of the embedded SmolLM2-135M-Instruct, one epoch
   on the parcel-service FAQ of the assistant demo (workflows/assistant/demo/faq.jsonl) with four
   facts left out (parcel insurance, drop-off lockers, tracking-number format, the store's
   street): questions about them are what it answers badly.
2. A tunesmith server (in this process, on a free loopback port) serves v1 behind the route
   `assistant`, logging requests and feedback (serve --log-dir).
3. A scripted user (script.jsonl) asks 20 fixed questions: each of the four facts in three
   wordings, two facts v1 was taught, and six general questions. An answer passes when it
   contains the fact's key words (the purpose-built criterion); a failed one gets a thumbs
   down with the right answer as a correction (POST /v1/feedback), a good one a thumbs up.
4. `improve cycle` on improve.yaml (written into DIR): mine -> data (the users' corrections,
   mixed with replayed FAQ examples) -> train (v1's adapter continued) -> validate against
   regression.jsonl (each fact asked in a fourth wording nobody trained on, plus two taught
   facts) and guard.jsonl (the six general questions) -> deploy: the candidate is copied into
   the server's adapters folder and the canary runs on the live server, the plan's hours
   shortened to seconds (deploy.time_scale), the scripted users' traffic flowing meanwhile.
5. The scripted user asks again: its pass rate before and after, on the route.

DIR/demo.json holds the numbers (the README's table), DIR/improve/cycle.md the cycle's report.
Minutes on 2 CPU cores; every model runs on the CPU.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from importlib.resources import files
from pathlib import Path

import yaml

from tunesmith.utils.console import console

DEMO = files("tunesmith.workflows.improve") / "demo"
FAQ = files("tunesmith.workflows.assistant") / "demo" / "faq.jsonl"
BASE = "smollm2-135m-instruct"
UNKNOWN = ("insurance", "locker", "tracking number", "Mill Street", "LPP")
GUARDED = ("sky", "bees", "planet", "hot", "water", "France")  # guard topics: never replayed
ROUTE = "assistant"
MAX_TOKENS = 40
TRAIN = [
    "method.r=16",
    "method.alpha=32",
    "train.learning_rate=1e-3",
    "train.batch_size=4",
    "train.lr_scheduler=constant",
    "train.save_steps=100000",
    "data.cutoff_len=128",
]


def _rows(resource) -> list[dict]:
    return [json.loads(line) for line in resource.read_text(encoding="utf-8").splitlines() if line]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def train_v1(out: Path) -> Path:
    """The production adapter: the FAQ without the four facts."""
    from tunesmith.config.load import load_config
    from tunesmith.runs.folder import RunFolder
    from tunesmith.train import run_stage

    faq = [
        r
        for r in _rows(FAQ)
        if not any(w.lower() in (r["instruction"] + r["output"]).lower() for w in UNKNOWN)
    ]
    data = _write_jsonl(out / "data" / "faq_v1.jsonl", faq)
    config = load_config(
        None,
        [
            f"model.name_or_path={BASE}",
            f"data.train={data}",
            f"output.dir={out / 'runs'}",
            "output.name=v1",
            *TRAIN,
            "train.epochs=1",
        ],
    )
    run = RunFolder.create(config.output, "v1")
    run_stage(config, run)
    return run.root


def self_replay(out: Path, v1: Path) -> Path:
    """General questions (the quickstart's replay list, the guard set's questions and topics
    left out) with v1's own finished answers: replayed in training against forgetting."""
    from tunesmith.runs.inference import make_client
    from tunesmith.utils.llm import replies_of

    guard = [r["prompt"].lower() for r in _rows(DEMO / "guard.jsonl")]
    questions = [
        q["question"]
        for q in _rows(files("tunesmith.workflows") / "quickstart_data" / "general_replay.jsonl")
        if q["question"].lower() not in guard and not any(w in q["question"] for w in GUARDED)
    ]
    client = make_client(f"local:{v1}")
    replies = replies_of(client, [[{"role": "user", "content": q}] for q in questions], 64, 0.0)
    rows = [
        {"instruction": q, "input": "", "output": r.text.strip()}
        for q, r in zip(questions, replies, strict=True)
        if r.finished and r.text.strip()
    ]
    return _write_jsonl(out / "data" / "replay.jsonl", rows)


class DemoServer:
    """The tunesmith server on a free loopback port, in a thread of this process."""

    def __init__(self, out: Path):
        import uvicorn

        from tunesmith.config.schema import RunConfig
        from tunesmith.serve.server import build_state, uvicorn_config

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        config = RunConfig.model_validate(
            {
                "model": {"name_or_path": BASE},
                "serve": {
                    "model_name": "base",
                    "port": port,
                    "adapters_dir": str(out / "adapters"),
                    "log_dir": str(out / "logs"),
                    "routes": {ROUTE: {"stable": "v1"}},
                    "max_tokens_limit": 128,
                    "batch_wait_ms": 20,
                },
            }
        )
        self.state = build_state(config)
        self.server = uvicorn.Server(uvicorn_config(self.state, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the demo server did not start in 60 s")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class ScriptedUser:
    """Asks the script's questions on the route and rates each answer by its criterion."""

    def __init__(self, url: str):
        import httpx

        self.http = httpx.Client(base_url=url, timeout=300)

    def ask(self, prompt: str, user: str, model: str = ROUTE) -> tuple[str, str | None]:
        response = self.http.post(
            "/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
                "user": user,
            },
        )
        if response.status_code != 200:
            return "", None
        body = response.json()
        return body["choices"][0]["message"]["content"], body["id"]

    def session(self, script: list[dict], feedback: bool) -> list[dict]:
        rows = []
        for number, item in enumerate(script):
            answer, rid = self.ask(item["prompt"], f"user-{number}")
            passed = all(c.lower() in answer.lower() for c in item["contains"])
            if feedback and rid:
                body = {"response_id": rid, "rating": "up" if passed else "down"}
                if not passed and item.get("correction"):
                    body["correction"] = item["correction"]
                self.http.post("/v1/feedback", json=body)
            rows.append({**item, "answer": answer, "passed": passed})
        return rows


class TrafficClock:
    """Real time; every wait, the scripted users in the canary's buckets and as many others
    ask a question each (the canary's traffic), then the rest of the wait is slept."""

    def __init__(self, user: ScriptedUser, script: list[dict], canary_users: int = 2):
        from tunesmith.serve.canary import bucket

        ids = [f"visitor-{i}" for i in range(5000)]
        first = [u for u in ids if bucket(ROUTE, u) < 100][:canary_users]  # the 1% buckets
        self.users = first + [u for u in ids if u not in first][:canary_users]
        self.user, self.script, self.turn = user, script, 0

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        end = time.time() + seconds
        for name in self.users:
            item = self.script[self.turn % len(self.script)]
            self.turn += 1
            self.user.ask(item["prompt"], name)
        time.sleep(max(0.0, end - time.time()))


def improve_yaml(out: Path, url: str, replay: Path) -> Path:
    for name in ("regression.jsonl", "guard.jsonl"):
        (out / name).write_text((DEMO / name).read_text(encoding="utf-8"), encoding="utf-8")
    spec = {
        "server": {"url": url, "route": ROUTE},
        "logs": "logs",
        "current": "runs/v1",
        "regression": "regression.jsonl",
        "guard": "guard.jsonl",
        "work_dir": "improve",
        "mine": {"safety_probes": None},
        # one replayed FAQ example per three corrections (the default is one per correction):
        # fewer examples to train on 2 CPU cores
        "data": {"held_out": ["guard.jsonl"], "targeted_original_share": 0.25},
        "train": {
            "name": "v2",
            "overrides": [
                *TRAIN,
                "train.epochs=3",
                "train.learning_rate=2e-3",
                # v1's own answers to general questions, 30% of the training set (forgetting)
                f"data.replay.files=[{replay}]",
                "data.replay.ratio=0.3",
            ],
        },
        "validate": {"max_new_tokens": MAX_TOKENS, "ab_prompts": 20},
        "deploy": {
            "candidate_name": "v2",
            "adapters_dir": "adapters",
            "time_scale": 1 / 3600,  # the plan's hours as seconds
            "check_every_s": 2,
            "min_requests": 2,
            "min_feedback": 2,
        },
    }
    path = out / "improve.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def run_demo(out: str | Path) -> dict:
    from tunesmith.workflows.improve.cycle import run_cycle
    from tunesmith.workflows.improve.deploy import _install

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    started = time.perf_counter()
    script = _rows(DEMO / "script.jsonl")

    console.rule("improve demo 1/5: v1, the assistant in production")
    if not (out / "runs" / "v1" / "adapter" / "adapter_model.safetensors").is_file():
        shutil.rmtree(out / "runs" / "v1", ignore_errors=True)
        train_v1(out)
    _install(out / "runs" / "v1", out / "adapters" / "v1")
    times["train_v1_s"] = time.perf_counter() - started

    console.rule("improve demo 2/5: serving v1 with request logging")
    shutil.rmtree(out / "logs", ignore_errors=True)
    server = DemoServer(out)
    try:
        user = ScriptedUser(server.url)
        mark = time.perf_counter()
        console.rule("improve demo 3/5: the scripted user asks and rates")
        before = user.session(script, feedback=True)
        times["users_before_s"] = time.perf_counter() - mark

        console.rule("improve demo 4/5: one improvement cycle")
        replay = self_replay(out, out / "runs" / "v1")
        path = improve_yaml(out, server.url, replay)
        shutil.rmtree(out / "improve", ignore_errors=True)
        mark = time.perf_counter()

        def warm(candidate: Path) -> None:
            # in the adapters folder and loaded before the canary's clock runs: a first load
            # is not a slowdown of the model
            _install(candidate, out / "adapters" / "v2")
            user.ask("hello", "warm-up", model="v2")

        report = run_cycle(path, clock=TrafficClock(user, script), before_deploy=warm)
        times["cycle_s"] = time.perf_counter() - mark

        console.rule("improve demo 5/5: the scripted user asks again")
        after = user.session(script, feedback=False)
    finally:
        server.stop()
    times["total_s"] = time.perf_counter() - started
    summary = summarize(before, after, report, times)
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _rate(rows: list[dict], pattern: str | None = None) -> dict:
    picked = [r for r in rows if pattern is None or r["pattern"] == pattern]
    return {"n": len(picked), "passed": sum(r["passed"] for r in picked)}


def summarize(before: list[dict], after: list[dict], report: dict, times: dict) -> dict:
    groups = ("insurance", "lockers", "tracking", "store", "known", "general")
    m = report.get("metric") or {}
    headline = {
        "decision": report.get("decision"),
        "deploy": report.get("deploy"),
        "regression_before": m.get("before"),
        "regression_after": m.get("after"),
        "regression_gain_ci95": m.get("ci95"),
        "regression_p": m.get("p_value"),
        "guard": m.get("guard"),
        "users_passed_before": _rate(before),
        "users_passed_after": _rate(after),
        "risk": (report.get("plan") or {}).get("risk"),
        "minutes": round(times["total_s"] / 60, 1),
    }
    return {
        "headline": headline,
        "by_group": {g: {"before": _rate(before, g), "after": _rate(after, g)} for g in groups},
        "metric": m,
        "gates": report.get("gates"),
        "times_s": {k: round(v, 1) for k, v in times.items()},
        "before": before,
        "after": after,
    }
