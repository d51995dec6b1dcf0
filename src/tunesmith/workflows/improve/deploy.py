"""`tunesmith improve deploy`: the risk of a validated candidate, its canary plan, and the
canary itself against a running tunesmith server.

Risk (assess_risk): three signals, each rated low / medium / high; the highest one is the risk.
- size of change: the share of evaluated prompts (full evaluation and guard set) whose
  pass / fail outcome differs between the two models (validation.json full.flipped): below
  0.1 low, below 0.3 medium, else high. (Rewording alone is not counted: a retrained adapter
  words nearly every answer a little differently.)
- opportunity type (the mined opportunities the targeted data addressed: the patterns of
  data_summary.json, see `addressed`; all of them without a summary): `user_experience`,
  `quality_improvement` and `performance` (gaps) low; `regression_fix` and `error_pattern`
  medium; anything else (e.g. `performance_optimization`: an architecture change) high; an
  opportunity whose pattern or details mention safety / refusal / harmful is high.
- safety delta: the change of the guard set's mean (candidate - current): at least -0.01 low,
  at least -0.05 medium, lower high; with no guard set it is medium (nothing measured).
`deploy.risk` other than auto overrides the assessment.

Plan (the seed's table, durations in hours):
| risk | canary % | canary h | rollout stages % | h per stage |
| low | 10 | 1 | 25, 50, 100 | 0.5 |
| medium | 5 | 2 | 10, 25, 50, 100 | 1 |
| high | 1 | 4 | 5, 10, 25, 50, 75, 100 | 2 |

Canary (Canary.run): through the server's admin endpoints (serve/admin.py: POST
/v1/admin/routes, POST /v1/admin/rollback, GET /v1/admin/metrics) the route's split goes to the
canary share, then to each rollout stage, each held for its duration; every
`deploy.check_every_s` the metrics since the stage began are compared, canary vs stable:
- errors: canary error_rate > stable error_rate + max_error_rate_increase,
- latency: canary p95 > stable p95 x max_latency_ratio and more than latency_slack_ms above it,
- feedback: canary down share (down / (up + down)) > stable's + max_down_share_increase,
each judged only once the canary has min_requests requests (min_feedback votes for the
feedback rule; latency once both arms have min_latency_requests: a p95 of a few requests is
noise). At 100% the stable model gets no traffic: the canary is compared with the stable
model's numbers of the stage before. The first breach rolls back at once (POST
/v1/admin/rollback: all traffic to stable) and ends the canary. After the 100% stage the
candidate becomes the route's stable model (canary none). Time comes from a clock object
(now(), sleep(seconds)); tests pass a fake one and run the whole plan in milliseconds;
`deploy.time_scale` shortens every duration.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tunesmith.utils.console import console
from tunesmith.utils.errors import ConfigError, ModelError
from tunesmith.workflows.improve.spec import DeploySection

LEVELS = ("low", "medium", "high")
PLANS = {
    "low": {
        "canary_percentage": 10,
        "canary_duration_h": 1,
        "rollout_stages": [25, 50, 100],
        "stage_duration_h": 0.5,
    },
    "medium": {
        "canary_percentage": 5,
        "canary_duration_h": 2,
        "rollout_stages": [10, 25, 50, 100],
        "stage_duration_h": 1,
    },
    "high": {
        "canary_percentage": 1,
        "canary_duration_h": 4,
        "rollout_stages": [5, 10, 25, 50, 75, 100],
        "stage_duration_h": 2,
    },
}
LOW_TYPES = {"user_experience", "quality_improvement", "performance"}
MEDIUM_TYPES = {"regression_fix", "error_pattern"}
SAFETY_WORDS = ("safety", "refus", "harm")


def addressed(opportunities: list[dict], data_summary: dict | None) -> list[dict]:
    """The opportunities the candidate's training data was built for (its patterns)."""
    if not data_summary or "patterns" not in data_summary:
        return opportunities
    return [o for o in opportunities if o.get("id") in data_summary["patterns"]]


def _worst(levels: list[str]) -> str:
    return max(levels, key=LEVELS.index)


def assess_risk(validation: dict, opportunities: list[dict]) -> dict:
    """{"level", "signals": {name: {"value", "level", "why"}}} from the rules above."""
    full = validation.get("stages", {}).get("full", {})
    flipped = full.get("flipped")
    if flipped is None:
        size = {"value": None, "level": "high", "why": "no full evaluation: size unknown"}
    else:
        level = "low" if flipped < 0.1 else "medium" if flipped < 0.3 else "high"
        why = f"{flipped:.0%} of evaluated prompts changed outcome"
        size = {"value": flipped, "level": level, "why": why}
    type_levels = []
    for opp in opportunities:
        kind = str(opp.get("type", ""))
        text = json.dumps(opp, ensure_ascii=False).lower()
        if any(word in text for word in SAFETY_WORDS):
            type_levels.append(("high", f"{kind} touches safety or refusals"))
        elif kind in LOW_TYPES:
            type_levels.append(("low", kind))
        elif kind in MEDIUM_TYPES:
            type_levels.append(("medium", kind))
        else:
            type_levels.append(("high", f"{kind or 'unknown type'}"))
    if type_levels:
        worst = _worst([lvl for lvl, _ in type_levels])
        kind = {
            "value": [why for _, why in type_levels],
            "level": worst,
            "why": "; ".join(why for lvl, why in type_levels if lvl == worst),
        }
    else:
        kind = {"value": [], "level": "medium", "why": "no opportunity report: type unknown"}
    guard = full.get("guard")
    if guard is None:
        safety = {"value": None, "level": "medium", "why": "no guard set measured"}
    else:
        delta = guard["candidate"] - guard["current"]
        level = "low" if delta >= -0.01 else "medium" if delta >= -0.05 else "high"
        safety = {"value": delta, "level": level, "why": f"guard mean changed by {delta:+.3f}"}
    signals = {"size_of_change": size, "opportunity_type": kind, "safety_delta": safety}
    return {"level": _worst([s["level"] for s in signals.values()]), "signals": signals}


def deployment_plan(risk: str) -> dict:
    if risk not in PLANS:
        raise ConfigError(f"deploy.risk: got {risk!r}; allowed: {', '.join(LEVELS)}")
    return {"risk": risk, **PLANS[risk]}


def plan_steps(plan: dict, time_scale: float = 1.0) -> list[tuple[float, float]]:
    """(traffic %, seconds) of each step: the canary, then every rollout stage."""
    steps = [(plan["canary_percentage"], plan["canary_duration_h"])]
    steps += [(p, plan["stage_duration_h"]) for p in plan["rollout_stages"]]
    return [(float(p), h * 3600 * time_scale) for p, h in steps]


# --- time and the server's admin API ------------------------------------------------------------


class Clock(Protocol):
    def now(self) -> float: ...  # seconds since the epoch

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def iso(seconds: float) -> str:
    moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class AdminClient(Protocol):
    def routes(self) -> dict: ...

    def set_route(self, route: str, stable: str, canary: str | None, percent: float) -> dict: ...

    def rollback(self, route: str) -> dict: ...

    def metrics(self, route: str, since: str) -> dict: ...

    def models(self) -> list[str]: ...


class HttpAdmin:
    """The admin endpoints of a tunesmith server (its API key when one is set)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0):
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs) -> dict:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ModelError(f"{self.url}{path}: the server did not answer ({exc})") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise ModelError(f"{self.url}{path}: HTTP {response.status_code}: {message}")
        return response.json()

    def routes(self) -> dict:
        return self._call("GET", "/v1/admin/routes")["routes"]

    def set_route(self, route: str, stable: str, canary: str | None, percent: float) -> dict:
        body = {"route": route, "stable": stable, "canary": canary, "canary_percent": percent}
        return self._call("POST", "/v1/admin/routes", json=body)

    def rollback(self, route: str) -> dict:
        return self._call("POST", "/v1/admin/rollback", json={"route": route})

    def metrics(self, route: str, since: str) -> dict:
        return self._call("GET", "/v1/admin/metrics", params={"route": route, "since": since})

    def models(self) -> list[str]:
        return [m["id"] for m in self._call("GET", "/v1/models").get("data", [])]


# --- the canary ---------------------------------------------------------------------------------


def breaches(metrics: dict, cfg: DeploySection) -> list[str]:
    """The breach rules (module docstring) on one metrics snapshot; [] when healthy."""
    stable, canary = metrics.get("stable") or {}, metrics.get("canary") or {}
    out = []
    if canary.get("requests", 0) >= cfg.min_requests:
        s_err, c_err = stable.get("error_rate") or 0.0, canary.get("error_rate") or 0.0
        if c_err > s_err + cfg.max_error_rate_increase:
            out.append(
                f"error rate {c_err:.3f} on the canary vs {s_err:.3f} on stable "
                f"(> +{cfg.max_error_rate_increase})"
            )
        s_p95, c_p95 = stable.get("latency_p95_ms"), canary.get("latency_p95_ms")
        enough = min(stable.get("requests", 0), canary.get("requests", 0))
        if (
            enough >= cfg.min_latency_requests
            and s_p95 is not None
            and c_p95 is not None
            and c_p95 > s_p95 * cfg.max_latency_ratio
            and c_p95 - s_p95 > cfg.latency_slack_ms
        ):
            out.append(
                f"p95 latency {c_p95:.0f} ms on the canary vs {s_p95:.0f} ms on stable "
                f"(> x{cfg.max_latency_ratio})"
            )
    votes = canary.get("feedback_up", 0) + canary.get("feedback_down", 0)
    if votes >= cfg.min_feedback:
        c_down = canary.get("feedback_down", 0) / votes
        s_votes = stable.get("feedback_up", 0) + stable.get("feedback_down", 0)
        s_down = stable.get("feedback_down", 0) / s_votes if s_votes else 0.0
        if c_down > s_down + cfg.max_down_share_increase:
            out.append(
                f"thumbs-down share {c_down:.2f} on the canary vs {s_down:.2f} on stable "
                f"(> +{cfg.max_down_share_increase})"
            )
    return out


@dataclass
class Canary:
    admin: AdminClient
    route: str
    stable: str
    candidate: str
    cfg: DeploySection
    clock: Clock = field(default_factory=SystemClock)
    log: list[dict] = field(default_factory=list)
    last_stable: dict | None = None  # the stable model's last metrics with traffic

    def _note(self, event: str, **facts) -> None:
        entry = {"time": iso(self.clock.now()), "event": event, **facts}
        self.log.append(entry)
        console.print(f"canary: {event} {json.dumps(facts, ensure_ascii=False)[:200]}")

    def run(self, plan: dict) -> dict:
        """Every step of the plan, or a rollback at the first breach; the outcome."""
        served = self.admin.models()
        for name in (self.stable, self.candidate):
            if name not in served:
                raise ModelError(
                    f"the server does not serve '{name}' (it serves {', '.join(served)}); put "
                    "the candidate run into its adapters folder (deploy.adapters_dir)"
                )
        steps = plan_steps(plan, self.cfg.time_scale)
        try:
            for number, (percent, seconds) in enumerate(steps):
                stage = "canary" if number == 0 else f"rollout {number}"
                self.admin.set_route(self.route, self.stable, self.candidate, percent)
                began = self.clock.now()
                self._note("stage", stage=stage, percent=percent, seconds=seconds)
                found = self._watch(began, seconds)
                if found:
                    self.admin.rollback(self.route)
                    self._note("rollback", stage=stage, percent=percent, breaches=found)
                    return {"outcome": "rolled back", "stage": stage, "breaches": found,
                            "log": self.log}  # fmt: skip
            self.admin.set_route(self.route, self.candidate, None, 0.0)
            self._note("promoted", stable=self.candidate)
            return {"outcome": "promoted", "stage": None, "breaches": [], "log": self.log}
        except BaseException as exc:  # an interrupted canary must not stay half-rolled-out
            if not any(e["event"] in ("rollback", "promoted") for e in self.log):
                try:
                    self.admin.rollback(self.route)
                    self._note("rollback", reason=f"deploy failed: {exc}")
                except Exception:
                    pass
            raise

    def _watch(self, began: float, seconds: float) -> list[str]:
        end = began + seconds
        while True:
            now = self.clock.now()
            wait = min(self.cfg.check_every_s, max(0.0, end - now))
            if wait > 0:
                self.clock.sleep(wait)
            metrics = self.admin.metrics(self.route, iso(began))
            stable = metrics.get("stable") or {}
            if stable.get("requests", 0):
                self.last_stable = stable
            elif self.last_stable:  # 100%: stable gets no traffic; its last stage's numbers
                metrics = {**metrics, "stable": self.last_stable}
            found = breaches(metrics, self.cfg)
            canary = metrics.get("canary") or {}
            self._note(
                "check",
                requests=canary.get("requests", 0),
                error_rate=canary.get("error_rate"),
                p95_ms=canary.get("latency_p95_ms"),
                stable_p95_ms=(metrics.get("stable") or {}).get("latency_p95_ms"),
            )
            if found or self.clock.now() >= end:
                return found


def deploy_candidate(
    spec,
    root: Path,
    candidate: Path,
    validation: dict,
    opportunities: list[dict],
    out: Path,
    admin: AdminClient | None = None,
    clock: Clock | None = None,
    dry_run: bool = False,
) -> dict:
    """Risk, plan and (unless dry_run) the canary; writes out/deploy.json."""
    from tunesmith.runs.folder import atomic_write

    if validation.get("decision") != "approved":
        raise ConfigError(
            f"{candidate}: validation rejected this candidate "
            f"({'; '.join(validation.get('reasons', [])) or 'gates not run'}); it is not deployed"
        )
    cfg: DeploySection = spec.deploy
    risk = assess_risk(validation, opportunities)
    level = risk["level"] if cfg.risk == "auto" else cfg.risk
    plan = deployment_plan(level)
    result: dict = {"risk": risk, "plan": plan, "risk_used": level}
    name = cfg.candidate_name or Path(candidate).name
    if not dry_run:
        if cfg.adapters_dir:
            _install(Path(candidate), _source(root, cfg.adapters_dir) / name)
        admin = admin or HttpAdmin(spec.server.url, spec.server.api_key, spec.server.timeout_s)
        routes = admin.routes()
        route = routes.get(spec.server.route)
        if route is None:
            raise ConfigError(
                f"server.route: the server has no route '{spec.server.route}' "
                f"(its routes: {', '.join(routes) or 'none'}); create it with "
                "POST /v1/admin/routes or serve.routes"
            )
        canary = Canary(
            admin, spec.server.route, route["stable"], name, cfg, clock or SystemClock()
        )
        result["stable_before"] = route["stable"]
        result["candidate_name"] = name
        result.update(canary.run(plan))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "deploy.json", json.dumps(result, indent=2) + "\n")
    return result


def _source(root: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path


def _install(candidate: Path, target: Path) -> None:
    import shutil

    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(candidate, staging, ignore=shutil.ignore_patterns("checkpoints"))
    staging.rename(target)
