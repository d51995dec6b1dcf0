"""`tunesmith improve cycle improve.yaml`: one improvement cycle, end to end, as named stages.

    mine -> data -> train -> validate -> deploy

The stages run through the assistant workflow's stage runner (workflows/assistant/runner.py):
each is skipped when the content hash of its inputs (its settings, the files it reads, the
records of the stages before it) is unchanged and its outputs are intact, so a cycle that
stopped (a failed training, a server that was down) picks up where it stopped, and new logs
start a new cycle from `mine`. The runner keeps its state in work_dir/.improve/state.json.

- mine: `mine` (mine.py) on the server's logs and the regression set (answered by mine.model
  when set, else the latest logged answers) -> work_dir/mine/opportunities.json / .md.
- data: `build_targeted_data` (targeted.py) -> work_dir/data/train.jsonl (the seed's targeted
  or mixed rule).
- train: retrain.py, the candidate continuing the production adapter -> work_dir/runs/<name>.
- validate: validate.py's gates -> work_dir/validate/validation.json / .md.
- deploy: deploy.py's risk, plan and canary (only for an approved candidate; `--plan-only`
  assesses risk and plan without touching the server) -> work_dir/deploy/deploy.json.

The report: work_dir/cycle.json and cycle.md, with the metric before and after (the full
evaluation's means, the gain with its 95% paired-bootstrap interval, and per error pattern),
every gate, the risk and plan, and the canary's log.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunesmith.runs.folder import atomic_write
from tunesmith.workflows.assistant.runner import (
    Context,
    Stage,
    file_hash,
    record_of,
    run_stages,
)
from tunesmith.workflows.improve.spec import ImproveSpec, load_spec, source

STAGES = ("mine", "data", "train", "validate", "deploy")
CYCLE_STATE = ".improve/state.json"  # the stage runner's record of finished stages


class Cycle:
    """One cycle's settings and what its callers may inject (clients, admin API, clock)."""

    def __init__(
        self,
        spec: ImproveSpec,
        root: Path,
        *,
        clients=None,
        admin=None,
        clock=None,
        embedder=None,
        teacher=None,
        plan_only: bool = False,
        before_deploy=None,
    ):
        self.spec, self.root = spec, root
        self.work = source(root, spec.work_dir).resolve()
        self.clients, self.admin, self.clock = clients, admin, clock
        self.embedder, self.teacher, self.plan_only = embedder, teacher, plan_only
        self.before_deploy = before_deploy  # called with the approved candidate's run folder

    def src(self, name: str) -> Path:
        return source(self.root, name)

    def hashes(self, *names: str | None) -> dict:
        out = {}
        for name in names:
            if name:
                path = self.src(name)
                out[name] = file_hash(path) if path.is_file() else None
        return out

    def log_hashes(self) -> dict:
        logs = self.src(self.spec.logs)
        return {
            f: file_hash(logs / f) if (logs / f).is_file() else None
            for f in ("requests.jsonl", "feedback.jsonl")
        }

    def current_hash(self) -> str:
        adapter = self.src(self.spec.current) / "adapter" / "adapter_model.safetensors"
        return file_hash(adapter) if adapter.is_file() else str(self.src(self.spec.current))

    # --- the stages ------------------------------------------------------------------------

    def stages(self) -> list[Stage]:
        s = self.spec
        return [
            Stage(
                "mine",
                "failures in the served logs, error patterns, ranked opportunities",
                lambda ctx: {
                    "logs": self.log_hashes(),
                    "files": self.hashes(s.regression),
                    "settings": s.mine,
                    "current": self.current_hash(),
                },
                self.mine,
            ),
            Stage(
                "data",
                "targeted examples per pattern, mixed with the original data",
                lambda ctx: {
                    "mine": record_of(ctx, "mine"),
                    "original": self.hashes(self.original_data()),
                    "settings": s.data,
                    "teacher": s.teacher,
                },
                self.data,
            ),
            Stage(
                "train",
                "the candidate, continuing the production adapter",
                lambda ctx: {
                    "data": record_of(ctx, "data"),
                    "settings": s.train.model_dump(),
                    "current": self.current_hash(),
                },
                self.train,
            ),
            Stage(
                "validate",
                "quick check, full evaluation with significance, replayed A/B",
                lambda ctx: {
                    "train": record_of(ctx, "train"),
                    "settings": s.validation.model_dump(),
                    "files": self.hashes(s.regression, s.guard, *s.validation.eval),
                    "logs": self.log_hashes(),
                },
                self.validate,
            ),
            Stage(
                "deploy",
                "risk, canary plan and the canary on the server",
                lambda ctx: {
                    "validate": record_of(ctx, "validate"),
                    "settings": s.deploy.model_dump(),
                    "server": s.server.model_dump(exclude={"api_key"}),
                    "plan_only": self.plan_only,
                },
                self.deploy,
            ),
        ]

    def original_data(self) -> str:
        if self.spec.original_data:
            return self.spec.original_data
        from tunesmith.workflows.improve.retrain import current_run

        files = current_run(self.spec, self.root).config.data.train
        if not files:
            from tunesmith.utils.errors import ConfigError

            raise ConfigError(
                "original_data: the current run names no data.train file; set original_data"
            )
        return files[0]

    def mine(self, ctx: Context) -> dict:
        from tunesmith.workflows.improve.mine import mine

        # regression prompts: answered by mine.model when set, else their latest logged answers
        report = mine(
            self.src(self.spec.logs),
            self.spec.mine_settings(),
            regression=self.src(self.spec.regression),
            embedder=self.embedder,
            out_dir=self.work / "mine",
        )
        return {
            "outputs": ["mine/opportunities.json", "mine/opportunities.md"],
            "failures": report.failures,
            "opportunities": len(report.opportunities),
            "overall_score": report.overall.get("value"),
        }

    def data(self, ctx: Context) -> dict:
        from tunesmith.workflows.improve.targeted import build_targeted_data

        settings = self.spec.data_settings()
        update: dict = {"held_out": [str(self.src(p)) for p in settings.held_out]}
        if settings.teacher is None and self.teacher is None:
            update["teacher"] = self.spec.teacher
        settings = settings.model_copy(update=update)  # paths: relative to improve.yaml
        result = build_targeted_data(
            self.work / "mine" / "opportunities.json",
            self.src(self.original_data()),
            settings,
            teacher=self.teacher,
            out_dir=self.work / "data",
            current=self.src(self.spec.current),
        )
        return {
            "outputs": ["data/train.jsonl", "data/fix.jsonl", "data/data_summary.json"],
            "summary": {k: result.summary.get(k) for k in ("failures", "rule", "original_ratio")},
            "fix_examples": len(result.fix),
            "train_examples": len(result.train),
        }

    def train(self, ctx: Context) -> dict:
        from tunesmith.workflows.improve.retrain import retrain

        name = self.spec.train.name or f"candidate-{ctx.key[:8]}"
        candidate = retrain(self.spec, self.root, self.work / "data" / "train.jsonl", name)
        relative = candidate.run_dir.resolve().relative_to(self.work)
        return {
            "outputs": [f"{relative}/summary.json", f"{relative}/adapter/adapter_config.json"],
            "run": str(relative),
            "loss": candidate.summary.get("train_loss"),
        }

    def validate(self, ctx: Context) -> dict:
        from tunesmith.workflows.improve.validate import model_client, validate_candidate

        run = self.work / ctx.records["train"]["run"]
        result = validate_candidate(
            self.spec, self.root, run, self.work / "validate", clients=self.clients or model_client
        )
        return {
            "outputs": ["validate/validation.json", "validate/validation.md"],
            "decision": result["decision"],
            "reasons": result["reasons"],
        }

    def deploy(self, ctx: Context) -> dict:
        from tunesmith.workflows.improve.deploy import addressed, deploy_candidate

        validation = json.loads((self.work / "validate" / "validation.json").read_text())
        if validation["decision"] != "approved":
            return {"outputs": [], "outcome": "not deployed (validation rejected the candidate)"}
        report = json.loads((self.work / "mine" / "opportunities.json").read_text())
        summary = _read(self.work / "data" / "data_summary.json")
        if self.before_deploy and not self.plan_only:
            self.before_deploy(self.work / ctx.records["train"]["run"])
        result = deploy_candidate(
            self.spec,
            self.root,
            self.work / ctx.records["train"]["run"],
            validation,
            addressed(report.get("opportunities", []), summary),
            self.work / "deploy",
            admin=self.admin,
            clock=self.clock,
            dry_run=self.plan_only,
        )
        return {
            "outputs": ["deploy/deploy.json"],
            "outcome": result.get("outcome", "planned only"),
            "risk": result["risk_used"],
        }

    # --- the whole cycle -------------------------------------------------------------------

    def run(self, from_stage: str | None = None, until: str | None = None) -> dict:
        self.work.mkdir(parents=True, exist_ok=True)
        # the runner's paths: inside work_dir
        ctx = Context(spec=self.spec, root=self.work, state_file=CYCLE_STATE)
        done = run_stages(self.stages(), ctx, from_stage, until)
        report = cycle_report(self.work, ctx.records, done)
        atomic_write(self.work / "cycle.json", json.dumps(report, indent=2) + "\n")
        atomic_write(self.work / "cycle.md", render_cycle(report))
        return report


def run_cycle(path: str | Path, **kwargs) -> dict:
    from_stage, until = kwargs.pop("from_stage", None), kwargs.pop("until", None)
    spec, root = load_spec(path)
    return Cycle(spec, root, **kwargs).run(from_stage, until)


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def cycle_report(work: Path, records: dict, done: list) -> dict:
    validation = _read(work / "validate" / "validation.json") if "validate" in records else None
    deploy = _read(work / "deploy" / "deploy.json") if "deploy" in records else None
    mine = _read(work / "mine" / "opportunities.json") if "mine" in records else None
    data = _read(work / "data" / "data_summary.json") if "data" in records else None
    full = (validation or {}).get("stages", {}).get("full")
    metric = None
    if full:
        metric = {
            "name": full["metric"],
            "n": full["n"],
            "before": full["current"],
            "after": full["candidate"],
            "gain": full["gain"],
            "ci95": full["ci95"],
            "p_value": full["p_value"],
            "pass_rate_before": full["current_pass_rate"],
            "pass_rate_after": full["candidate_pass_rate"],
            "by_pattern": full["by_pattern"],
            "guard": full.get("guard"),
        }
    return {
        "stages": [{"stage": name, "status": status} for name, status in done],
        "opportunities": [
            {k: o.get(k) for k in ("rank", "id", "type", "priority", "frequency")}
            for o in (mine or {}).get("opportunities", [])[:5]
        ],
        "mined": (mine or {}).get("stats"),
        "data": data,
        "candidate": records.get("train", {}).get("run"),
        "decision": (validation or {}).get("decision"),
        "reasons": (validation or {}).get("reasons"),
        "metric": metric,
        "gates": {
            name: {"passed": g["passed"], "why": g.get("why")}
            for name, g in (validation or {}).get("stages", {}).items()
        },
        "risk": (deploy or {}).get("risk"),
        "plan": (deploy or {}).get("plan"),
        "deploy": records.get("deploy", {}).get("outcome"),
        "canary_log": (deploy or {}).get("log", []),
    }


def render_cycle(r: dict) -> str:
    lines = ["# Improvement cycle", ""]
    lines += [f"- {s['stage']}: {s['status']}" for s in r["stages"]]
    if r["opportunities"]:
        lines += ["", "## Opportunities (top 5)", "", "| rank | id | type | priority | failures |"]
        lines += ["|---|---|---|---|---|"]
        lines += [
            f"| {o['rank']} | {o['id']} | {o['type']} | {o['priority']} | {o['frequency']} |"
            for o in r["opportunities"]
        ]
    if r["data"]:
        d = r["data"]
        lines += ["", f"Data: rule {d.get('rule')}, {d.get('failures')} failures, original "
                  f"share {d.get('original_ratio')}."]  # fmt: skip
    m = r["metric"]
    if m:
        lines += [
            "",
            "## Metric before / after",
            "",
            f"{m['name']}, {m['n']} items: {m['before']:.3f} -> {m['after']:.3f}, gain "
            f"{m['gain']:+.3f} (95% CI {m['ci95'][0]:+.3f} to {m['ci95'][1]:+.3f}, "
            f"p {m['p_value']:.3f}); pass rate {m['pass_rate_before']:.2f} -> "
            f"{m['pass_rate_after']:.2f}",
        ]
        for name, p in m["by_pattern"].items():
            lines.append(f"- pattern {name} ({p['n']}): {p['current']:.3f} -> {p['candidate']:.3f}")
        if m["guard"]:
            g = m["guard"]
            lines.append(
                f"- guard ({g['n']}): {g['current']:.3f} -> {g['candidate']:.3f} "
                f"(drop {g['drop']:+.3f})"
            )
    if r["gates"]:
        lines += ["", "## Gates", "", "| gate | passed | why |", "|---|---|---|"]
        lines += [f"| {n} | {g['passed']} | {g['why'] or ''} |" for n, g in r["gates"].items()]
        lines += ["", f"Decision: **{r['decision']}**"]
    if r["plan"]:
        p = r["plan"]
        lines += [
            "",
            "## Deployment",
            "",
            f"Risk {p['risk']}: canary {p['canary_percentage']}% for {p['canary_duration_h']} h, "
            f"then {p['rollout_stages']} % for {p['stage_duration_h']} h each. "
            f"Outcome: {r['deploy']}.",
        ]
        for name, sig in (r["risk"] or {}).get("signals", {}).items():
            lines.append(f"- {name}: {sig['level']} ({sig['why']})")
    if r["canary_log"]:
        lines += ["", "## Canary log", "", "| time | event | facts |", "|---|---|---|"]
        lines += [f"| {t} | {e} | {f} |" for t, e, f in _condensed(r["canary_log"])]
    elif r["deploy"]:
        lines += ["", f"Deploy: {r['deploy']}"]
    return "\n".join(lines) + "\n"


def _condensed(log: list[dict]) -> list[tuple[str, str, str]]:
    """The canary log's events, each stage's checks folded into one row (cycle.json keeps all)."""
    rows, checks = [], []

    def fold() -> None:
        if checks:
            worst = max((c.get("error_rate") or 0.0) for c in checks)
            p95 = [c["p95_ms"] for c in checks if c.get("p95_ms") is not None]
            facts = f"{len(checks)} checks, canary requests {checks[-1].get('requests')}, "
            facts += f"max error rate {worst:.3f}, max p95 {max(p95) if p95 else '-'} ms"
            rows.append((checks[-1]["time"], "checks", facts))
            checks.clear()

    for entry in log:
        if entry["event"] == "check":
            checks.append(entry)
            continue
        fold()
        facts = {k: v for k, v in entry.items() if k not in ("time", "event")}
        rows.append((entry["time"], entry["event"], json.dumps(facts)))
    fold()
    return rows
