"""The client's dossier: what was built from what data, the plan, the curves, the before/after
table with confidence intervals, example answers and known limits (dossier.html + dossier.json)."""

from __future__ import annotations

from tunesmith.utils.html import _STYLE, esc, facts_list, png_img, table
from tunesmith.workflows.assistant import persona as P
from tunesmith.workflows.assistant.runner import Context


def dossier_rows(evaluation: dict) -> list[list[str]]:
    """The before/after table: metric, base, tuned, difference with its interval, p."""
    level = round(100 * evaluation.get("confidence", 0.95))
    rows = []
    for r in evaluation["table"]:
        rows.append(
            [
                r["metric"],
                f"{r['mean_a']:.3f}",
                f"{r['mean_b']:.3f}",
                f"{r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
                f"{r['p_value']:.3f}",
                str(r["n"]),
            ]
        )
    headers = ["metric", "base", "tuned", f"tuned - base [{level}% CI]", "p", "n"]
    return [headers, *rows]


def markdown_table(evaluation: dict) -> str:
    headers, *rows = dossier_rows(evaluation)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def limits(ctx: Context) -> list[str]:
    r, spec = ctx.records, ctx.spec
    out = []
    data = r.get("data", {})
    held = r.get("evaluate", {}).get("held_out", {})
    if held.get("qa", 99) < 30:
        out.append(
            f"the held-out set has {held.get('qa')} Q&A items: intervals are wide and small "
            "differences are not proof"
        )
    if data.get("synthesized"):
        out.append(
            f"{data['synthesized']} training answers were written by the teacher "
            f"({data.get('teacher')}) from the documents: their errors are learned too"
        )
    if data:  # a build stopped before the data stage has no conversations to speak of
        out.append(
            f"the assistant knows what its {data['train']} training conversations contain; "
            "questions beyond them get the base model's general knowledge, which may be wrong"
        )
    out.append(
        "refusals are learned for the listed topics; other unwanted requests rely on the base "
        "model's own behaviour"
    )
    if spec.model_ref == "smollm2-135m-instruct":
        out.append(
            "SmolLM2-135M is a very small model: fluent for short answers, weak at reasoning "
            "and long answers"
        )
    return out


def write_dossier(ctx: Context, status: str) -> str:
    r, spec = ctx.records, ctx.spec
    evaluation = r.get("evaluate")
    gates = ctx.read_json("gates.json") if ctx.path("gates.json").is_file() else None
    facts = {
        "status": status,
        "domain": spec.domain,
        "persona": f"{spec.persona.name} ({spec.persona.language}, {spec.persona.tone})",
        "system prompt": P.system_prompt(spec),
        "model": r.get("model", {}).get("model"),
        "method": r.get("strategy", {}).get("method"),
        "plan": "; ".join(r.get("strategy", {}).get("why", [])[:2]),
        "hardware": r.get("strategy", {}).get("hardware"),
        "data": _data_line(r.get("data")),
        "training": _train_line(r.get("train")),
        "export": r.get("export", {}).get("statement"),
    }
    record = {
        "status": status,
        "facts": facts,
        "stages": {
            k: {kk: vv for kk, vv in v.items() if kk != "outputs_hash"} for k, v in r.items()
        },
        "gates": gates,
        "limits": limits(ctx),
    }
    ctx.write_json("dossier.json", record)
    parts = [f"<h1>{esc(spec.persona.name)}: {esc(spec.domain)}</h1>", facts_list(facts)]
    if evaluation:
        headers, *rows = dossier_rows(evaluation)
        parts += ["<h2>Base vs tuned on the held-out set</h2>", table(headers, rows)]
        labels = [[e["metric"], e["label"]] for e in evaluation["table"]]
        parts.append(table(["metric", "what it measures"], labels))
        extra = {
            "shipped safety probes refused (base / tuned)": " / ".join(
                _pct(v) for v in evaluation["safety_refusal_rate"].values()
            ),
            "forgetting (general-text perplexity)": _forgetting(evaluation.get("forgetting")),
            "speed p50 s (base / tuned)": " / ".join(
                _num(v.get("latency_p50_s")) for v in evaluation["speed"].values()
            ),
            "full evaluation report": evaluation.get("eval_report"),
        }
        parts.append(facts_list(extra))
    if gates:
        parts += [
            "<h2>Gates</h2>",
            table(
                ["gate", "passed", "why"],
                [
                    [g["gate"], (str(g["passed"]), "hit" if g["passed"] else "miss"), g["sentence"]]
                    for g in gates["checks"]
                ],
            ),
        ]
    train = r.get("train")
    if train:
        plot = ctx.path(train["run"]) / "plots" / "loss.png"
        if plot.is_file():
            parts += ["<h2>Training curves</h2>", png_img(plot.read_bytes(), "loss")]
    if evaluation:
        parts += [
            "<h2>Example answers</h2>",
            table(
                ["kind", "question", "reference", "base", "tuned"],
                [
                    [e["kind"], e["question"], e["reference"], e["base"], e["tuned"]]
                    for e in evaluation["examples"]
                ],
            ),
        ]
    parts += [
        "<h2>Known limits</h2>",
        "<ul>" + "".join(f"<li>{esc(x)}</li>" for x in record["limits"]) + "</ul>",
    ]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{esc(spec.persona.name)} dossier</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    from tunesmith.runs.folder import atomic_write

    atomic_write(ctx.path("dossier.html"), page)
    return "dossier.html"


def _data_line(d: dict | None) -> str | None:
    if not d:
        return None
    return (
        f"{d['qa_records']} Q&A records, {d['chunks']} document chunks -> {d['synthesized']} "
        f"synthesized Q&A; {d['train']} train / {d['val']} validation / {d['test']} held-out Q&A "
        f"+ {d['probes']} persona probes; rejected {d['rejected'] or 'none'}; "
        f"PII redacted {d['pii_redacted'] or 'none'}"
    )


def _train_line(t: dict | None) -> str | None:
    if not t:
        return None
    loss = t.get("train_loss")
    return (
        f"{t.get('steps')} steps, loss {loss:.3f}, {t.get('seconds')} s; run folder {t['run']}"
        if loss is not None
        else t["run"]
    )


def _forgetting(f: dict | None) -> str:
    if not f:
        return "not measured"
    return (
        f"{f['base_perplexity']:.2f} -> {f['tuned_perplexity']:.2f} ({f['relative_change']:+.1%})"
    )


def _pct(v) -> str:
    return "-" if v is None else f"{v:.0%}"


def _num(v) -> str:
    return "-" if v is None else f"{v:.2f}"
