"""The eight stages of `tunesmith assistant build`, in the order of seed 000 §28.6:
requirements, model, strategy, data, train, evaluate, gates, export."""

from __future__ import annotations

import math
import random
import shutil
from importlib.resources import files
from pathlib import Path

from tunesmith.utils.console import console
from tunesmith.utils.errors import ConfigError, DataError
from tunesmith.workflows.assistant import persona as P
from tunesmith.workflows.assistant.documents import chunk_text, read_document
from tunesmith.workflows.assistant.runner import (
    Context,
    Stage,
    files_hash,
    record_of,
    replace_folder,
)

GENERAL_TEXT = files("tunesmith.workflows.assistant") / "general.txt"
QUESTION_PROMPT = {
    "en": (
        "Here is a passage from the documents of {org} ({domain}):\n\n{chunk}\n\n"
        "Write one question a customer could ask that this passage answers. "
        "Reply with the question only."
    ),
    "zh": (
        "以下是{org}（{domain}）文档中的一段：\n\n{chunk}\n\n"
        "请写出一个客户可能会问、且这段文字能回答的问题。只回复问题本身。"
    ),
}
ANSWER_PROMPT = {
    "en": "Answer from this passage only.\n\nPassage:\n{chunk}\n\nQuestion: {question}",
    "zh": "只根据这段文字回答。\n\n文字：\n{chunk}\n\n问题：{question}",
}


# --- 1. requirements --------------------------------------------------------------------------


def _sources(spec) -> list[str]:
    d = spec.data
    return [*d.qa, *d.documents, *([d.dataset.registry] if d.dataset else [])]


def read_qa(ctx: Context, reject=None) -> tuple[list[dict], dict]:
    """Q&A conversations from data.qa and data.dataset, each {"messages", "source"}."""
    from tunesmith.data.formats import load_conversations
    from tunesmith.data.registry import resolve_dataset

    groups = []
    for name in ctx.spec.data.qa:
        path = ctx.source(name)
        if not path.is_file():
            raise DataError(f"data.qa: {name}: file not found (looked in {ctx.root})")
        groups.append(([path], "auto", {}))
    if ctx.spec.data.dataset:
        ref = ctx.spec.data.dataset
        registry = ctx.source(ref.registry)
        if not registry.is_file():
            raise DataError(f"data.dataset.registry: {ref.registry}: file not found")
        entry = resolve_dataset(registry, ref.name)
        groups.append((entry.files, entry.fmt, entry.columns))
    records, stats = [], {"read": 0, "kept": 0, "rejected": 0}
    for paths, fmt, columns in groups:
        convs, st = load_conversations(paths, fmt, columns, on_error="skip", reject=reject)
        for key in stats:
            stats[key] += st[key]
        for c in convs:
            records.append({"messages": c.messages, "source": f"{Path(c.source).name}:{c.line}"})
    return records, stats


def read_chunks(ctx: Context) -> list[dict]:
    chunks = []
    for name in ctx.spec.data.documents:
        text = read_document(ctx.source(name))
        for i, chunk in enumerate(chunk_text(text, ctx.spec.data.chunk_chars)):
            chunks.append({"source": f"{Path(name).name}#{i + 1}", "text": chunk})
    return chunks


def requirements(ctx: Context) -> dict:
    from tunesmith.evaluation.metrics import detect_lang

    spec, d = ctx.spec, ctx.spec.data
    if not (d.qa or d.documents or d.dataset):
        raise ConfigError(
            "data: no sources; list Q&A files under data.qa, documents under data.documents or a "
            "dataset_info.json entry under data.dataset"
        )
    qa, qa_stats = read_qa(ctx)
    chunks = read_chunks(ctx)
    persona = P.persona_examples(spec)
    expected_doc = len(chunks) * d.questions_per_chunk
    expected = len(qa) + expected_doc + len(persona)
    texts = [m["content"] for r in qa for m in r["messages"]] + [c["text"] for c in chunks]
    language = detect_lang(texts) if texts else spec.persona.language
    advice, warnings = [], []
    if language != spec.persona.language:
        warnings.append(
            f"the sources are mostly '{language}' but persona.language is "
            f"'{spec.persona.language}': answers will mix languages"
        )
    held_out = math.floor((len(qa) + expected_doc) * d.held_out)
    if expected < d.min_examples or held_out < d.min_held_out:
        need = max(
            d.min_examples - expected,
            math.ceil(d.min_held_out / d.held_out) - len(qa) - expected_doc,
        )
        raise DataError(
            f"data: too thin: about {expected} training examples ({len(qa)} Q&A records, "
            f"{len(chunks)} document chunks x {d.questions_per_chunk} questions, {len(persona)} "
            f"persona examples) and {held_out} held-out questions; data.min_examples is "
            f"{d.min_examples} and data.min_held_out {d.min_held_out}: add at least {max(need, 1)} "
            "Q&A pairs under data.qa or more documents under data.documents"
        )
    if expected < 200:
        advice.append(
            f"{expected} examples teach the persona and the facts they contain; for broad "
            "coverage of a domain, several hundred Q&A pairs are the usual start"
        )
    if not spec.persona.refuse:
        advice.append("persona.refuse is empty: no refusal examples or refusal probes")
    facts = {
        "qa_records": len(qa),
        "qa_read": qa_stats,
        "documents": len(d.documents),
        "document_chars": sum(len(c["text"]) for c in chunks),
        "chunks": len(chunks),
        "expected_document_questions": expected_doc,
        "persona_examples": len(persona),
        "expected_examples": expected,
        "expected_held_out": held_out,
        "source_language": language,
        "persona_language": spec.persona.language,
        "refusal_topics": spec.persona.refuse,
        "warnings": warnings,
        "advice": advice,
    }
    for line in warnings:
        console.print(f"[yellow]warning: {line}")
    for line in advice:
        console.print(f"advice: {line}")
    console.print(f"requirements: ~{expected} examples, ~{held_out} held out, language {language}")
    return {"outputs": [ctx.write_json("requirements.json", facts)], **facts}


# --- 2. model ------------------------------------------------------------------------------------


def choose_model(ctx: Context) -> dict:
    from tunesmith.config.schema import ModelConfig
    from tunesmith.models.load import load_tokenizer
    from tunesmith.models.resolve import resolve_model
    from tunesmith.plan.estimate import model_facts

    spec = ctx.spec
    ref = spec.model_ref
    resolved = resolve_model(ref)
    tokenizer = load_tokenizer(resolved, ModelConfig(name_or_path=ref))
    language = P.check_language(tokenizer, spec.persona.language, ref)
    facts = model_facts(ref)
    why = (
        "the embedded SmolLM2-135M-Instruct: it loads offline and trains on a CPU in minutes"
        if spec.model == "auto"
        else "the model named in assistant.yaml"
    )
    record = {
        "model": ref,
        "source": resolved.source,
        "parameters": facts.total,
        "language": language,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "why": why,
    }
    if not record["chat_template"]:
        raise ConfigError(f"model: '{ref}' has no chat template; an assistant needs a chat model")
    console.print(f"model: {ref} ({facts.total / 1e6:.1f}M parameters): {why}")
    return {"outputs": [ctx.write_json("model.json", record)], **record}


# --- 3. strategy ---------------------------------------------------------------------------------


def _hardware(budget):
    from tunesmith.plan.hardware import detect_hardware, parse_hardware
    from tunesmith.plan.memory import GB

    here = detect_hardware()
    device = here.device if budget.device == "auto" else budget.device
    if device == "cuda" and here.device != "cuda" and budget.memory_gb is None:
        raise ConfigError(
            "budget.device: cuda, but this machine has no CUDA GPU; set budget.memory_gb to "
            "plan for one elsewhere"
        )
    if budget.memory_gb is None and device == here.device:
        return here
    gb = budget.memory_gb or here.memory / GB
    return parse_hardware(f"{device}:{gb}")


ASSISTANT_DEFAULTS = [
    "data.cutoff_len=384",
    "train.batch_size=8",
    "train.logging_steps=2",
    "train.lr_scheduler=cosine",
    "train.warmup_ratio=0.05",
    "train.save_total_limit=1",
]


def strategy(ctx: Context) -> dict:
    from tunesmith.config.load import load_config
    from tunesmith.plan.memory import GB
    from tunesmith.plan.planner import make_plan

    spec, req = ctx.spec, ctx.records["requirements"]
    preview = ctx.write_jsonl(".assistant/plan_preview.jsonl", _preview(ctx))
    base = [
        f"model.name_or_path={spec.model_ref}",
        *ASSISTANT_DEFAULTS,
        f"data.train=[{ctx.path(preview)}]",
    ]
    if spec.train.method != "auto":
        base.append(f"method.type={spec.train.method}")
    config = load_config(None, base)
    hardware = _hardware(spec.budget)
    plan = make_plan(
        config, goal="quality", probe=spec.budget.probe and hardware.here, hardware=hardware
    )
    advice = plan.advice
    options = [advice.recommended, *advice.alternatives]
    if spec.train.method != "auto":
        options = [o for o in options if o.method == spec.train.method] or [advice.recommended]
    chosen = next((o for o in options if o.fits), None)
    if chosen is None:
        smallest = min(options, key=lambda o: o.memory)
        key = "budget.memory_gb" if spec.budget.memory_gb else "budget.device"
        raise ConfigError(
            f"{key}: nothing fits: the smallest option ({smallest.method}) needs "
            f"~{smallest.memory / GB:.1f} GB and {hardware.describe()} is available; raise the "
            "memory budget or set model to a smaller one"
        )
    overrides = [*base[:-1], *chosen.overrides, *spec.train.overrides]
    run_config = load_config(None, overrides)  # the key named in any bad override
    epochs = run_config.train.epochs
    tokens_per_epoch = (plan.data.mean_tokens or 100) * req["expected_examples"]
    tps = plan.time.tokens_per_second if plan.time else None
    note = plan.time.note if plan.time else "no time estimate"
    minutes = tokens_per_epoch * epochs / tps / 60 if tps else None
    budget = spec.budget.minutes
    reasons = [chosen.why, *advice.reasons]
    if minutes is not None and minutes > budget:
        fit = math.floor(epochs * budget / minutes * 10) / 10
        if fit < 1:
            raise ConfigError(
                f"budget.minutes: {budget:g} minutes are too short: one epoch over "
                f"~{tokens_per_epoch:,.0f} tokens takes ~{minutes / epochs:.1f} minutes with "
                f"{chosen.method} on {hardware.describe()} ({note}); raise budget.minutes, use "
                "less data or a smaller model"
            )
        reasons.append(f"epochs cut from {epochs:g} to {fit:g} to fit budget.minutes={budget:g}")
        overrides.append(f"train.epochs={fit}")
        epochs, minutes = fit, minutes * fit / epochs
    record = {
        "method": chosen.method,
        "overrides": overrides,
        "planner_overrides": chosen.overrides,
        "assistant_overrides": spec.train.overrides,
        "why": reasons,
        "warnings": advice.warnings,
        "hardware": hardware.describe(),
        "device": hardware.device,
        "memory_gb": round(chosen.memory / GB, 2),
        "epochs": epochs,
        "tokens_per_epoch": round(tokens_per_epoch),
        "tokens_per_second": tps,
        "estimated_minutes": round(minutes, 1) if minutes is not None else None,
        "time_note": note,
        "alternatives": [o.as_dict() for o in advice.alternatives],
    }
    console.print(
        f"strategy: {chosen.method} ({', '.join(chosen.overrides)}), ~{record['memory_gb']} GB, "
        f"~{record['estimated_minutes']} min on {hardware.describe()}: {chosen.why}"
    )
    return {"outputs": [ctx.write_json("plan.json", record)], **record}


def _preview(ctx: Context) -> list[dict]:
    """Conversations like the training data, for the planner's token counts."""
    system = {"role": "system", "content": P.system_prompt(ctx.spec)}
    rows = [{"messages": [system, *_without_system(r["messages"])]} for r in read_qa(ctx)[0]]
    rows += [{"messages": r["messages"]} for r in P.persona_examples(ctx.spec)]
    return rows


def _without_system(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m["role"] != "system"]


# --- 4. data -------------------------------------------------------------------------------------


def build_data(ctx: Context) -> dict:
    from tunesmith.data.quality.pii import redact_pii

    spec, d = ctx.spec, ctx.spec.data
    rejects: list[dict] = []

    def reject_record(record, reason):
        rejects.append(
            {
                "source": f"{Path(record.source).name}:{record.line}",
                "reason": reason,
                "record": record.data,
            }
        )

    qa, _ = read_qa(ctx, reject_record)
    system = {"role": "system", "content": P.system_prompt(spec)}
    examples = [
        {"messages": [system, *_without_system(r["messages"])], "kind": "qa", "source": r["source"]}
        for r in qa
    ]
    chunks = read_chunks(ctx)
    ctx.write_jsonl("data/chunks.jsonl", chunks)
    synth = _synthesize(ctx, chunks, rejects) if chunks and d.questions_per_chunk else []
    examples += synth
    # inspect and clean: empty turns, PII, duplicates; every drop is written with its reason
    pii: dict[str, int] = {}
    cleaned = []
    for ex in examples:
        messages = []
        for m in ex["messages"]:
            text, hits = redact_pii(m["content"].strip())
            for h in hits:
                pii[h.kind] = pii.get(h.kind, 0) + 1
            messages.append({**m, "content": text})
        if any(not m["content"] for m in messages if m["role"] != "system"):
            rejects.append(
                {"source": ex["source"], "reason": "empty turn", "record": ex["messages"]}
            )
            continue
        cleaned.append({**ex, "messages": messages})
    kept = _dedup(cleaned, rejects)
    # split: held-out test and validation never trained on
    rng = random.Random(d.seed)
    rng.shuffle(kept)
    n_test = max(d.min_held_out, round(len(kept) * d.held_out))
    if len(kept) - n_test < 1:
        raise DataError(
            f"data: {len(kept)} Q&A examples after cleaning leave nothing to train on beside "
            f"{n_test} held out; add Q&A pairs under data.qa or documents under data.documents"
        )
    n_val = round(len(kept) * d.validation) if d.validation else 0
    test, val, train = kept[:n_test], kept[n_test : n_test + n_val], kept[n_test + n_val :]
    persona = P.persona_examples(spec)
    train = train + [{**p, "source": "persona"} for p in persona]
    rng.shuffle(train)
    probes = [{**p, "source": "persona probe"} for p in P.persona_probes(spec)]
    test_rows = [
        {"messages": e["messages"], "category": e["kind"], "source": e["source"]}
        for e in test + probes
    ]
    outputs = [
        ctx.write_jsonl("data/train.jsonl", [_row(e) for e in train]),
        ctx.write_jsonl("data/val.jsonl", [_row(e) for e in val]),
        ctx.write_jsonl("data/test.jsonl", test_rows),
        ctx.write_jsonl("data/rejects.jsonl", rejects),
    ]
    counts = {}
    for split, rows in (("train", train), ("val", val), ("test", test + probes)):
        for e in rows:
            counts.setdefault(split, {}).setdefault(e["kind"], 0)
            counts[split][e["kind"]] += 1
    reasons: dict[str, int] = {}
    for r in rejects:
        key = r["reason"].split(" (")[0].split(" of ")[0]
        reasons[key] = reasons.get(key, 0) + 1
    stats = {
        "counts": counts,
        "train": len(train),
        "val": len(val),
        "test": len(test),
        "probes": len(probes),
        "qa_records": len(qa),
        "chunks": len(chunks),
        "synthesized": len(synth),
        "teacher": d.teacher,
        "pii_redacted": pii,
        "rejected": reasons,
        "system_prompt": system["content"],
    }
    outputs.append(ctx.write_json("data/data.json", stats))
    console.print(
        f"data: {len(train)} train, {len(val)} validation, {len(test)} held-out Q&A + "
        f"{len(probes)} persona probes; {len(synth)} Q&A written from {len(chunks)} chunks; "
        f"{len(rejects)} rejected ({reasons or 'none'}); PII redacted: {pii or 'none'}"
    )
    return {"outputs": outputs, **stats}


def _row(example: dict) -> dict:
    return {"messages": example["messages"]}


def _teacher(ctx: Context):
    from tunesmith.runs.inference import make_client

    teacher = ctx.spec.data.teacher
    return make_client(f"local:{ctx.spec.model_ref}" if teacher == "base" else teacher)


def _synthesize(ctx: Context, chunks: list[dict], rejects: list[dict]) -> list[dict]:
    """Questions about each chunk, then answers from the chunk, both by the teacher (the data
    tools' `clean_instruction` and `teacher_answers`); the chunk is left out of the training
    conversation, so the tuned model learns to answer without it."""
    import torch

    from tunesmith.data.synth import clean_instruction, teacher_answers

    spec, d = ctx.spec, ctx.spec.data
    lang = spec.persona.language
    client = _teacher(ctx)
    torch.manual_seed(d.seed)
    asks = [
        [
            {
                "role": "user",
                "content": QUESTION_PROMPT[lang].format(
                    org=P.who(spec), domain=spec.domain, chunk=c["text"]
                ),
            }
        ]
        for c in chunks
        for _ in range(d.questions_per_chunk)
    ]
    owners = [c for c in chunks for _ in range(d.questions_per_chunk)]
    console.print(
        f"data: the teacher ({d.teacher}) writes {len(asks)} questions about {len(chunks)} chunks"
    )
    questions = client.chat(
        asks, max_new_tokens=48, temperature=0.7 if d.questions_per_chunk > 1 else 0.0
    )
    prompts, sources = [], []
    for raw, chunk in zip(questions, owners, strict=True):
        question = clean_instruction(raw).split("\n")[0].strip()
        if len(question) < 8:
            rejects.append(
                {"source": chunk["source"], "reason": "teacher question too short", "record": raw}
            )
            continue
        prompts.append(
            [
                {"role": "system", "content": P.system_prompt(spec)},
                {
                    "role": "user",
                    "content": ANSWER_PROMPT[lang].format(chunk=chunk["text"], question=question),
                },
            ]
        )
        sources.append((chunk["source"], question))
    chunk_texts = {c["source"]: c["text"] for c in chunks}

    def reject(prompt, reason):
        rejects.append(
            {
                "source": "teacher",
                "reason": f"teacher answer {reason}",
                "record": prompt[-1]["content"],
            }
        )

    records = teacher_answers(prompts, client, max_new_tokens=d.synth_max_new_tokens, reject=reject)
    # match answers back to their questions (teacher_answers keeps order, leaving rejects out)
    by_prompt = {r["messages"][1]["content"]: r for r in records}
    out = []
    for prompt, (source, question) in zip(prompts, sources, strict=True):
        r = by_prompt.get(prompt[1]["content"])
        if r is None:
            continue
        answer = r["messages"][-1]["content"]
        share = grounded_share(answer, chunk_texts[source])
        if share < d.grounding:
            reason = f"teacher answer not grounded in its chunk ({share:.2f} < {d.grounding})"
            rejects.append({"source": source, "reason": reason, "record": [question, answer]})
            continue
        out.append(
            {
                "messages": [
                    prompt[0],
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ],
                "kind": "document",
                "source": source,
            }
        )
    return out


def grounded_share(answer: str, passage: str) -> float:
    """The share of the answer's words (CJK: characters) that occur in the passage."""
    from tunesmith.data.synth import tokens

    words = tokens(answer)
    seen = set(tokens(passage))
    return sum(w in seen for w in words) / len(words) if words else 0.0


def _dedup(examples: list[dict], rejects: list[dict]) -> list[dict]:
    from tunesmith.data.quality.dedup import canonical_text, near_duplicate_groups

    texts = [
        " ".join(m["content"] for m in e["messages"] if m["role"] != "system") for e in examples
    ]
    questions = [
        next((m["content"] for m in e["messages"] if m["role"] == "user"), "") for e in examples
    ]
    drop: dict[int, str] = {}
    seen: dict[str, int] = {}
    for i, q in enumerate(questions):  # one answer per question: a repeated question is dropped
        key = canonical_text(q)
        if key in seen:
            drop[i] = f"duplicate question of {examples[seen[key]]['source']}"
        else:
            seen[key] = i
    for group in near_duplicate_groups(texts, threshold=0.8):
        for i in group[1:]:
            drop.setdefault(i, f"near duplicate of {examples[group[0]]['source']}")
    for i, reason in drop.items():
        rejects.append(
            {"source": examples[i]["source"], "reason": reason, "record": examples[i]["messages"]}
        )
    return [e for i, e in enumerate(examples) if i not in drop]


# --- 5. train ------------------------------------------------------------------------------------


def train_stage(ctx: Context) -> dict:
    from tunesmith.config.load import load_config
    from tunesmith.runs.folder import RunFolder
    from tunesmith.train import run_stage

    plan, data = ctx.records["strategy"], ctx.records["data"]
    name = f"run-{ctx.key[:8]}"
    general = [str(ctx.source(g)) for g in ctx.spec.evaluate.general] or [str(GENERAL_TEXT)]
    overrides = [
        *plan["overrides"],
        f"data.train=[{ctx.path('data/train.jsonl')}]",
        f"output.dir={ctx.path('runs')}",
        f"output.name={name}",
        "output.overwrite=true",
        f"train.forgetting_eval.data=[{','.join(general)}]",
        "train.forgetting_eval.max_docs=20",
    ]
    if data["val"]:
        steps_per_epoch = max(1, math.ceil(data["train"] / _batch(plan["overrides"])))
        every = max(2, steps_per_epoch // 2)
        overrides += [
            f"data.eval=[{ctx.path('data/val.jsonl')}]",
            "train.early_stopping.patience=2",
            f"train.save_steps={every}",
        ]
    config = load_config(None, [*overrides, *ctx.spec.train.overrides])  # the user's win
    run = RunFolder.create(config.output, "assistant")
    result = run_stage(config, run)
    summary = result.summary
    for old in ctx.path("runs").glob("run-*"):  # the new run is whole: earlier builds' go
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    record = {
        "run": f"runs/{name}",
        "train_loss": summary.get("train_loss"),
        "seconds": summary.get("seconds"),
        "steps": summary.get("steps"),
        "examples": summary.get("data", {}).get("examples"),
        "forgetting": summary.get("forgetting"),
        "best": summary.get("best"),
    }
    return {"outputs": [record["run"] + "/summary.json"], **record}


def _batch(overrides: list[str]) -> int:
    values = [o.split("=", 1)[1] for o in overrides if o.startswith("train.batch_size=")]
    return int(values[-1]) if values else 8


# --- 6-8 ----------------------------------------------------------------------------------------


def evaluate_stage(ctx: Context) -> dict:
    from tunesmith.workflows.assistant.evaluate import evaluate

    return evaluate(ctx)


def gates_stage(ctx: Context) -> dict:
    from tunesmith.workflows.assistant.evaluate import check_gates

    return check_gates(ctx)


def export_stage(ctx: Context) -> dict:
    from tunesmith.config.load import load_config
    from tunesmith.export.run import export_run
    from tunesmith.runs.folder import RunFolder

    run_dir = ctx.path(ctx.records["train"]["run"])
    staging = ctx.path(".assistant/export.staging")
    shutil.rmtree(staging, ignore_errors=True)
    config = load_config(
        RunFolder(run_dir).config_path,
        [f"export.dir={staging}", "export.overwrite=true", f"export.dtype={ctx.spec.export.dtype}"],
        saved=True,
    )
    result = export_run(config, run_dir)
    from tunesmith.workflows.assistant.build import bake_persona

    persona = bake_persona(result.folder, ctx.spec)
    replace_folder(result.folder, ctx.path("export"))
    v = result.verification
    record = {
        "folder": "export",
        "layout": result.layout,
        "statement": result.statement,
        "verified": bool(v and v.passed),
        "max_logit_diff": getattr(v, "max_abs_diff", None),
        **persona,
    }
    console.print(f"export: {ctx.path('export')} ({result.statement})")
    return {"outputs": ["export/config.json", ctx.write_json("export.json", record)], **record}


def _in(ctx: Context, *names: str) -> list[str]:
    return [record_of(ctx, n) for n in names]


def _spec(ctx: Context, *sections: str) -> dict:
    return {
        s: getattr(ctx.spec, s).model_dump()
        if hasattr(getattr(ctx.spec, s), "model_dump")
        else getattr(ctx.spec, s)
        for s in sections
    }


STAGES = [
    Stage(
        "requirements",
        "data volume, languages, what the persona demands",
        lambda c: [_spec(c, "domain", "persona", "data"), files_hash(c, _sources(c.spec))],
        requirements,
    ),
    Stage(
        "model",
        "the base model, and whether it writes the persona's language",
        lambda c: [c.spec.model_ref, c.spec.persona.language, _in(c, "requirements")],
        choose_model,
    ),
    Stage(
        "strategy",
        "the planner picks method and hyper-parameters for the budget",
        lambda c: [_spec(c, "train", "budget"), _in(c, "requirements", "model")],
        strategy,
    ),
    Stage(
        "data",
        "documents to Q&A, persona and refusal examples, clean, dedup, split",
        lambda c: [
            _spec(c, "domain", "persona", "data"),
            files_hash(c, _sources(c.spec)),
            _in(c, "model"),
        ],
        build_data,
    ),
    Stage(
        "train",
        "fine-tune with the monitor and early stopping",
        lambda c: [
            _spec(c, "evaluate"),
            files_hash(c, c.spec.evaluate.general),
            _in(c, "strategy", "data"),
        ],
        train_stage,
    ),
    Stage(
        "evaluate",
        "base vs tuned on the held-out set",
        lambda c: [_spec(c, "evaluate", "persona"), _in(c, "data", "train")],
        evaluate_stage,
    ),
    Stage(
        "gates",
        "is the tuned model better than its base?",
        lambda c: [_spec(c, "gates"), _in(c, "evaluate")],
        gates_stage,
    ),
    Stage(
        "export",
        "merge, reload and verify",
        lambda c: [_spec(c, "export"), _in(c, "train", "gates")],
        export_stage,
    ),
]
STAGE_NAMES = [s.name for s in STAGES]
