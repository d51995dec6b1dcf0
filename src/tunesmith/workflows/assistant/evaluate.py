"""Steps 6 and 7: the base model and the tuned one on the held-out set (the evaluation runner's
generation, perplexity, shipped safety probes and speed, plus BERTScore, embedding similarity,
persona consistency and refusal probes computed here from the same replies), and the gates."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from tunesmith.utils.console import console
from tunesmith.utils.errors import TunesmithError
from tunesmith.workflows.assistant.runner import Context

QA_KINDS = ("qa", "document")


class GateFailed(TunesmithError):
    """The tuned model did not earn its place: the build stops before export."""


# --- BERTScore ----------------------------------------------------------------------------------


def encoder_label(encoder_ref: str) -> str:
    from tunesmith.models.resolve import resolve_model

    path = Path(resolve_model(encoder_ref).path)
    name = path.name if path.name not in ("model", "") else path.parent.name
    return f"{encoder_ref} ({name}), last layer, no idf weighting, no baseline rescaling"


def bertscore(
    predictions: list[str], references: list[str], encoder_ref: str = "minilm-l6"
) -> list[float]:
    """BERTScore F1 per item (Zhang et al. 2020): each token's contextual embedding is matched to
    its most similar token on the other side (cosine); precision and recall average those
    maxima over prediction and reference tokens. Special tokens are left out; an empty side
    scores 0."""
    return [f for _, _, f in _bertscore_prf(tuple(predictions), tuple(references), encoder_ref)]


@lru_cache(maxsize=4)
def _bertscore_prf(predictions: tuple, references: tuple, encoder_ref: str) -> list[tuple]:
    import torch

    from tunesmith.evaluation.metrics import _encoder

    tokenizer, model = _encoder(encoder_ref)
    out = []
    with torch.inference_mode():
        for pred, ref in zip(predictions, references, strict=True):
            a, b = _token_vectors(tokenizer, model, pred), _token_vectors(tokenizer, model, ref)
            if a is None or b is None:
                out.append((0.0, 0.0, 0.0))
                continue
            sim = a @ b.T
            p, r = float(sim.max(dim=1).values.mean()), float(sim.max(dim=0).values.mean())
            out.append((p, r, 2 * p * r / (p + r) if p + r > 0 else 0.0))
    return out


def _token_vectors(tokenizer, model, text: str):
    import torch

    batch = tokenizer(
        text, truncation=True, max_length=256, return_tensors="pt", return_special_tokens_mask=True
    )
    special = batch.pop("special_tokens_mask")[0].bool()
    hidden = model(**batch).last_hidden_state[0][~special]
    if hidden.shape[0] == 0:
        return None
    return torch.nn.functional.normalize(hidden, dim=-1)


# --- step 6 ------------------------------------------------------------------------------------


def evaluate(ctx: Context) -> dict:
    from tunesmith.config.eval import EvalConfig
    from tunesmith.config.load import load_config
    from tunesmith.evaluation.compare import compare_scores
    from tunesmith.evaluation.metrics import detect_lang, embedding_similarity
    from tunesmith.evaluation.runner import run_eval
    from tunesmith.evaluation.safety import is_refusal
    from tunesmith.runs.folder import RunFolder

    spec, ev = ctx.spec, ctx.spec.evaluate
    run_dir = ctx.path(ctx.records["train"]["run"])
    config = load_config(RunFolder(run_dir).config_path, saved=True)
    tasks = ["generation", "perplexity", "safety", "speed"] + (["judge"] if ev.judge else [])
    config.eval = EvalConfig(
        data=[str(ctx.path("data/test.jsonl"))],
        tasks=tasks,
        baseline="base",
        max_new_tokens=ev.max_new_tokens,
        batch_size=8,
        judge={"model": ev.judge} if ev.judge else {},
        speed={"requests": 4},
    )
    if ev.safety_probes:
        config.eval.safety.probes = str(
            ctx.path(
                ctx.write_jsonl(".assistant/safety_probes.jsonl", safety_sample(ev.safety_probes))
            )
        )
    report = run_eval(config, run_dir)
    items = report["items"]
    roles = {"base": report["results"]["baseline"], "tuned": report["results"]["model"]}
    groups = {
        "qa": [i for i, it in enumerate(items) if it["category"] in QA_KINDS],
        "identity": [i for i, it in enumerate(items) if it["category"] == "identity"],
        "refusal": [i for i, it in enumerate(items) if it["category"] == "refusal"],
    }
    qa = groups["qa"]
    refs = [items[i]["reference"] for i in qa]
    scores: dict[str, dict[str, list]] = {}
    for role, result in roles.items():
        preds = [result["predictions"][i] or "" for i in qa]
        s = {
            m: [result["scores"][m][i] for i in qa]
            for m in ("rougeL", "rouge1", "chrf", "nll")
            if m in result["scores"]
        }
        s["bertscore_f1"] = bertscore(preds, refs, ev.encoder)
        s["similarity"] = embedding_similarity(preds, refs, ev.encoder)
        name = spec.persona.name.lower()
        s["persona_consistency"] = [
            float(
                name in (result["predictions"][i] or "").lower()
                and detect_lang([result["predictions"][i] or "x"]) == spec.persona.language
            )
            for i in groups["identity"]
        ]
        s["refusal_probes"] = [
            float(is_refusal(result["predictions"][i] or "")) for i in groups["refusal"]
        ]
        scores[role] = s
    b = config.eval.bootstrap
    compared = compare_scores(scores["base"], scores["tuned"], b.n_resamples, b.confidence, b.seed)
    labels = {
        "rougeL": "ROUGE-L F1 (0-100), held-out Q&A",
        "rouge1": "ROUGE-1 F1 (0-100), held-out Q&A",
        "chrf": "chrF (0-100), held-out Q&A",
        "bertscore_f1": f"BERTScore F1, held-out Q&A; encoder {encoder_label(ev.encoder)}",
        "similarity": f"embedding cosine similarity, held-out Q&A; encoder {ev.encoder}",
        "nll": "answer NLL per token (lower is better), held-out Q&A",
        "persona_consistency": (
            f"persona probes: says '{spec.persona.name}' in {spec.persona.language}"
        ),
        "refusal_probes": "refusal probes of persona.refuse: declined",
    }
    table = [
        {
            "metric": m,
            "label": labels[m],
            **{
                k: c[k]
                for k in (
                    "n",
                    "mean_a",
                    "mean_b",
                    "diff",
                    "ci_low",
                    "ci_high",
                    "p_value",
                    "significant",
                    "wins",
                    "ties",
                    "losses",
                    "higher_is_better",
                )
            },
        }
        for m, c in compared.items()
    ]
    safety = {role: r["tasks"].get("safety", {}).get("refusal_rate") for role, r in roles.items()}
    speed = {
        role: {
            k: r["tasks"].get("speed", {}).get(k)
            for k in ("latency_p50_s", "tokens_per_s", "size_on_disk_mb")
        }
        for role, r in roles.items()
    }
    examples = [
        {
            "question": items[i]["prompt"],
            "reference": items[i]["reference"],
            "base": roles["base"]["predictions"][i],
            "tuned": roles["tuned"]["predictions"][i],
            "kind": items[i]["category"],
        }
        for i in (qa[:4] + groups["identity"][:2] + groups["refusal"][:2])
    ]
    record = {
        "table": table,
        "encoder": encoder_label(ev.encoder),
        "held_out": {k: len(v) for k, v in groups.items()},
        "safety_refusal_rate": safety,
        "speed": speed,
        "forgetting": ctx.records["train"].get("forgetting"),
        "judge": report.get("judge"),
        "examples": examples,
        "eval_report": str((run_dir / "reports" / "eval.html").relative_to(ctx.root)),
        "confidence": b.confidence,
    }
    for row in table:
        console.print(
            f"{row['metric']}: base {row['mean_a']:.3f} -> tuned {row['mean_b']:.3f} "
            f"({row['diff']:+.3f}, {round(100 * b.confidence)}% CI "
            f"{row['ci_low']:+.3f} to {row['ci_high']:+.3f})"
        )
    return {"outputs": [ctx.write_json("evaluation.json", record)], **record}


def safety_sample(n: int) -> list[dict]:
    """The first n shipped safety probes taken round-robin over their categories."""
    from tunesmith.evaluation.safety import load_probes

    by_category: dict[str, list[dict]] = {}
    for probe in load_probes():
        by_category.setdefault(probe["category"], []).append(probe)
    queues, out = list(by_category.values()), []
    while len(out) < n and any(queues):
        for queue in queues:
            if queue and len(out) < n:
                out.append(queue.pop(0))
    return out


# --- step 7 ------------------------------------------------------------------------------------


def gate_checks(evaluation: dict, gates) -> list[dict]:
    """Each gate with passed and the sentence that explains it."""
    rows = {r["metric"]: r for r in evaluation["table"]}
    checks = []
    m = rows.get(gates.metric)
    if m is None:
        checks.append(
            {
                "gate": "better",
                "passed": False,
                "sentence": f"gates.metric: '{gates.metric}' was not measured on the held-out set",
            }
        )
    else:
        sign = 1 if m["higher_is_better"] else -1
        gain, low = sign * m["diff"], (m["ci_low"] if sign > 0 else -m["ci_high"])
        passed = gain > gates.min_gain and (low > 0 or not gates.significant)
        why = (
            f"held-out {gates.metric}: base {m['mean_a']:.3f}, tuned {m['mean_b']:.3f} "
            f"(gain {gain:+.3f}, "
            f"CI {m['ci_low']:+.3f} to {m['ci_high']:+.3f}, n={m['n']})"
        )
        if passed and gain > 0:
            sentence = f"the tuned model is better than its base: {why}"
        elif passed:  # a negative gates.min_gain lets a model through that is not better
            sentence = f"the tuned model is within gates.min_gain {gates.min_gain}: {why}"
        elif gain <= gates.min_gain:
            sentence = (
                f"the tuned model is not better than its base "
                f"(gates.min_gain {gates.min_gain}): {why}"
            )
        else:
            sentence = f"the tuned model's gain is not significant (gates.significant): {why}"
        checks.append({"gate": "better", "passed": passed, "sentence": sentence})
    forgetting = evaluation.get("forgetting") or {}
    change = forgetting.get("relative_change")
    if change is not None:
        passed = change <= gates.max_forgetting
        checks.append(
            {
                "gate": "forgetting",
                "passed": passed,
                "sentence": (
                    f"general-text perplexity {forgetting['base_perplexity']:.2f} -> "
                    f"{forgetting['tuned_perplexity']:.2f} ({change:+.1%}; gates.max_forgetting "
                    f"{gates.max_forgetting:.0%})"
                    + (
                        ""
                        if passed
                        else ": the tuned model forgot general language beyond the guard"
                    )
                ),
            }
        )
    r = rows.get("refusal_probes")
    if r is not None:
        drop = r["mean_a"] - r["mean_b"]
        passed = drop <= gates.max_refusal_drop
        checks.append(
            {
                "gate": "refusals",
                "passed": passed,
                "sentence": (
                    f"refusal probes declined: base {r['mean_a']:.0%}, tuned {r['mean_b']:.0%} "
                    f"(gates.max_refusal_drop {gates.max_refusal_drop:.0%})"
                    + ("" if passed else ": the tuned model declines less than its base")
                ),
            }
        )
    safety = evaluation.get("safety_refusal_rate") or {}
    if safety.get("base") is not None and safety.get("tuned") is not None:
        drop = safety["base"] - safety["tuned"]
        passed = drop <= gates.max_refusal_drop
        sentence = (
            f"shipped harmful-request probes declined: base {safety['base']:.0%}, tuned "
            f"{safety['tuned']:.0%} (gates.max_refusal_drop {gates.max_refusal_drop:.0%})"
        )
        if not passed:
            sentence += ": the tuned model is less safe than its base"
        checks.append({"gate": "safety", "passed": passed, "sentence": sentence})
    return checks


def check_gates(ctx: Context) -> dict:
    evaluation = ctx.read_json("evaluation.json")
    checks = gate_checks(evaluation, ctx.spec.gates)
    passed = all(c["passed"] for c in checks)
    ctx.write_json("gates.json", {"passed": passed, "checks": checks})
    for c in checks:
        console.print(
            ("[green]pass[/green] " if c["passed"] else "[red]FAIL[/red] ") + c["sentence"],
            soft_wrap=True,
        )
    if not passed:
        failed = "; ".join(c["sentence"] for c in checks if not c["passed"])
        raise GateFailed(f"gates: the build stops before export: {failed}")
    return {"outputs": ["gates.json"], "passed": True, "checks": checks}


def mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None
