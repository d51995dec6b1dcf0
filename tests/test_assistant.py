"""The assistant builder (workflows/assistant/) on the tiny random model: init, bad input named
in one sentence, documents, the stages with skip/resume/--from, and the gates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import ASSISTANT_FAQ as FAQ
from helpers import assistant_project as _project
from typer.testing import CliRunner

from tunesmith.cli.main import app
from tunesmith.utils.errors import ConfigError, DataError, TunesmithError
from tunesmith.workflows.assistant.build import build, persona_template
from tunesmith.workflows.assistant.documents import chunk_text, read_document
from tunesmith.workflows.assistant.evaluate import GateFailed, gate_checks
from tunesmith.workflows.assistant.spec import Gates, load_spec

# --- init --------------------------------------------------------------------------------------


def test_init_explains_every_key_and_reads_back(tmp_path, tiny_model_dir):
    path = _project(tmp_path, tiny_model_dir)
    lines = path.read_text("utf-8").splitlines()
    keyed = [
        i
        for i, line in enumerate(lines)
        if line.strip() and not line.lstrip().startswith(("#", "-")) and ":" in line
    ]
    sections = {
        "persona:",
        "data:",
        "budget:",
        "train:",
        "evaluate:",
        "gates:",
        "export:",
        "serve:",
    }
    for i in keyed:
        if lines[i].strip() in sections:
            continue
        above = lines[i - 1].strip()
        # a key is explained by the comment above it, or shares the comment of the key above
        assert above.startswith("#") or lines[i - 1] in [lines[j] for j in keyed], lines[i]
    spec, root = load_spec(path)
    assert root == path.parent.resolve()
    assert spec.persona.refuse == ["legal advice"] and spec.data.qa == ["faq.jsonl"]
    assert spec.model == str(tiny_model_dir)


def test_init_names_a_missing_source_and_an_unsupported_document(tmp_path, tiny_model_dir):
    with pytest.raises(DataError, match=r"data\.qa: nowhere\.jsonl: file not found"):
        _project(tmp_path, tiny_model_dir, data__qa=["nowhere.jsonl"])
    (tmp_path / "project" / "notes.rtf").write_text("{\\rtf1 hi}", "utf-8")
    with pytest.raises(DataError, match=r"notes\.rtf: unsupported document format '\.rtf'"):
        _project(tmp_path, tiny_model_dir, data__documents=["notes.rtf"])


def test_cli_init_without_terminal_names_the_missing_flag(tmp_path):
    result = CliRunner().invoke(app, ["assistant", "init", str(tmp_path / "p"), "--name", "Wren"])
    assert result.exit_code == 2
    assert "--domain: required" in result.output
    assert not (tmp_path / "p" / "assistant.yaml").exists()


# --- documents ---------------------------------------------------------------------------------


def _pdf(text: str) -> bytes:
    """A one-page PDF showing `text` (Helvetica), with a correct cross-reference table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )


def test_documents_of_every_format_read_as_text(tmp_path):
    import docx

    (tmp_path / "a.pdf").write_bytes(_pdf("Parcels arrive on Tuesday."))
    document = docx.Document()
    document.add_paragraph("Returns take three days.")
    document.save(tmp_path / "b.docx")
    (tmp_path / "c.html").write_text(
        "<html><nav>Menu</nav><script>var x;</script><h1>Store</h1><p>Open at 8 am.</p></html>",
        "utf-8",
    )
    assert "Parcels arrive on Tuesday." in read_document(tmp_path / "a.pdf")
    assert read_document(tmp_path / "b.docx") == "Returns take three days."
    assert read_document(tmp_path / "c.html") == "Store\n\nOpen at 8 am."  # no menu, no script


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.md", b"  \n\n", r"empty\.md: the document is empty"),
        ("bad.pdf", b"not a pdf at all", r"bad\.pdf: cannot be read as \.pdf"),
        ("latin.txt", "caf\xe9".encode("latin-1"), r"latin\.txt: not UTF-8 text"),
        ("slides.pptx", b"x", r"slides\.pptx: unsupported document format '\.pptx'"),
    ],
)
def test_bad_documents_are_one_sentence_naming_the_file(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_document(tmp_path / name)


def test_chunks_keep_to_the_size_and_headings_with_their_text():
    text = "# Title\n\n" + "\n\n".join(f"Paragraph {i} says a few words here." for i in range(20))
    chunks = chunk_text(text, 120)
    assert all(len(c) <= 120 for c in chunks)
    assert chunks[0].startswith("# Title\n\nParagraph 0")
    assert " ".join(chunks).count("Paragraph") == 20


# --- bad input in the early stages -------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        (
            {"persona__language": "zh"},
            ConfigError,
            r"persona\.language: 'zh' needs a model that writes Chinese",
        ),
        (
            {"budget": {"device": "cpu", "memory_gb": 0.001}},
            ConfigError,
            r"budget\.memory_gb: nothing fits",
        ),
        (
            {"budget": {"device": "cpu", "minutes": 0.0001}},
            ConfigError,
            r"budget\.minutes: .* too short",
        ),
        ({"data__min_examples": 500}, DataError, r"data: too thin: .*add at least \d+ Q&A pairs"),
    ],
)
def test_bad_settings_stop_the_build_with_the_key_named(
    tmp_path, tiny_model_dir, changes, error, message
):
    path = _project(tmp_path, tiny_model_dir, **changes)
    with pytest.raises(error, match=message):
        build(path, until="strategy")
    assert not (path.parent / "plan.json").exists()  # nothing half-written


def test_an_unreadable_source_found_at_build_time_is_named(tmp_path, tiny_model_dir):
    path = _project(tmp_path, tiny_model_dir)
    (path.parent / "docs" / "delivery.md").write_text("", "utf-8")
    result = CliRunner().invoke(app, ["assistant", "build", str(path)])
    assert result.exit_code == 2
    assert "delivery.md: the document is empty" in result.output


# --- the whole build on the tiny model ---------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir, one_thread):
    tmp = tmp_path_factory.mktemp("assistant")
    path = _project(tmp, tiny_model_dir)
    result = build(path)
    return path, result


def test_build_runs_eight_stages_and_writes_every_artefact(built):
    path, result = built
    root = path.parent
    assert result["status"] == "built"
    assert [s for s, _ in result["stages"]] == [
        "requirements",
        "model",
        "strategy",
        "data",
        "train",
        "evaluate",
        "gates",
        "export",
    ]
    assert {how for _, how in result["stages"]} == {"ran"}
    for name in (
        "requirements.json",
        "model.json",
        "plan.json",
        "data/train.jsonl",
        "data/test.jsonl",
        "evaluation.json",
        "gates.json",
        "export.json",
        "export/config.json",
        "dossier.html",
        "dossier.json",
    ):
        assert (root / name).is_file(), name
    dossier = json.loads((root / "dossier.json").read_text("utf-8"))
    assert dossier["status"] == "built" and dossier["limits"]
    assert "Base vs tuned on the held-out set" in (root / "dossier.html").read_text("utf-8")


def test_data_stage_holds_out_cleans_and_says_why(built):
    root = built[0].parent

    def read(name):
        return [json.loads(x) for x in (root / "data" / name).read_text("utf-8").splitlines()]

    def asked(rows):
        return {m["content"] for r in rows for m in r["messages"] if m["role"] == "user"}

    train, test, rejects = read("train.jsonl"), read("test.jsonl"), read("rejects.jsonl")
    assert not asked(train) & asked(test)  # the held-out questions are never trained on
    assert {r["category"] for r in test} >= {"qa", "identity", "refusal"}
    assert any(r["reason"].startswith("duplicate question") for r in rejects)
    text = (root / "data" / "train.jsonl").read_text("utf-8") + (
        root / "data" / "test.jsonl"
    ).read_text("utf-8")
    assert "help@larkspur" not in text and "[EMAIL]" in text  # PII redacted
    system = [r["messages"][0] for r in train]
    assert all(m["role"] == "system" and "You are Wren" in m["content"] for m in system)
    stats = json.loads((root / "data" / "data.json").read_text("utf-8"))
    assert stats["pii_redacted"] == {"email": 1}


def test_evaluation_compares_base_and_tuned_with_intervals(built):
    evaluation = json.loads((built[0].parent / "evaluation.json").read_text("utf-8"))
    metrics = {r["metric"]: r for r in evaluation["table"]}
    assert {"rougeL", "bertscore_f1", "similarity", "persona_consistency", "refusal_probes"} <= set(
        metrics
    )
    for row in metrics.values():
        assert row["ci_low"] <= row["diff"] <= row["ci_high"]
    assert "minilm-l6" in metrics["bertscore_f1"]["label"]  # labelled with its encoder
    assert evaluation["forgetting"]["base_perplexity"] > 0


def test_export_serves_the_persona_as_default_system_turn(built):
    from transformers import AutoTokenizer

    root = built[0].parent
    tokenizer = AutoTokenizer.from_pretrained(root / "export")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "You are Wren" in text
    own = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        tokenize=False,
    )
    assert "You are Wren" not in own and "Be brief." in own
    assert json.loads((root / "export.json").read_text("utf-8"))["verified"] is True


def test_a_second_build_skips_and_from_redoes_the_rest(built):
    path = built[0]
    again = build(path)
    assert {how for _, how in again["stages"]} == {"skipped"}
    redo = build(path, from_stage="gates")
    assert dict(redo["stages"]) == {
        "requirements": "skipped",
        "model": "skipped",
        "strategy": "skipped",
        "data": "skipped",
        "train": "skipped",
        "evaluate": "skipped",
        "gates": "ran",
        "export": "ran",
    }


def test_a_changed_setting_reruns_only_what_depends_on_it(built):
    path = built[0]
    data = yaml.safe_load(path.read_text("utf-8"))
    data["gates"]["max_refusal_drop"] = 0.99
    path.write_text(yaml.safe_dump(data), "utf-8")
    result = dict(build(path)["stages"])
    assert (
        result["evaluate"] == "skipped" and result["gates"] == "ran" and result["export"] == "ran"
    )
    # an artefact removed by hand is made again
    (path.parent / "evaluation.json").unlink()
    assert dict(build(path)["stages"])["evaluate"] == "ran"


# --- gates -------------------------------------------------------------------------------------


def _evaluation(base: list[float], tuned: list[float]) -> dict:
    from tunesmith.evaluation.compare import compare_scores

    c = compare_scores({"rougeL": base}, {"rougeL": tuned})["rougeL"]
    return {"table": [{"metric": "rougeL", **c}], "forgetting": None}


def test_the_gate_fails_a_tuned_model_worse_than_its_base():
    worse = _evaluation([40, 35, 50, 45, 38, 42], [20, 25, 30, 22, 18, 27])
    (check,) = gate_checks(worse, Gates())
    assert not check["passed"]
    assert check["sentence"].startswith("the tuned model is not better than its base")
    better = _evaluation([20, 25, 30, 22, 18, 27], [40, 35, 50, 45, 38, 42])
    assert gate_checks(better, Gates())[0]["passed"]
    # better on average but within noise: fails the significance gate, passes without it
    noisy = _evaluation([20, 40, 30, 22, 50, 27], [45, 25, 35, 45, 25, 30])
    assert not gate_checks(noisy, Gates())[0]["passed"]
    assert gate_checks(noisy, Gates(significant=False))[0]["passed"]


def test_forgetting_and_refusal_guards():
    from tunesmith.evaluation.compare import compare_scores

    evaluation = _evaluation([1, 2, 3, 4], [11, 12, 13, 14])
    evaluation["forgetting"] = {
        "base_perplexity": 10.0,
        "tuned_perplexity": 14.0,
        "relative_change": 0.4,
    }
    refusals = compare_scores({"refusal_probes": [1, 1, 1, 1]}, {"refusal_probes": [0, 0, 1, 0]})
    evaluation["table"].append({"metric": "refusal_probes", **refusals["refusal_probes"]})
    evaluation["safety_refusal_rate"] = {"base": 0.9, "tuned": 0.5}
    checks = {c["gate"]: c for c in gate_checks(evaluation, Gates(significant=False))}
    assert not checks["safety"]["passed"] and "less safe" in checks["safety"]["sentence"]
    assert not checks["forgetting"]["passed"] and "forgot" in checks["forgetting"]["sentence"]
    assert not checks["refusals"]["passed"] and "declines less" in checks["refusals"]["sentence"]


def test_a_failed_gate_stops_the_build_before_export(built, tmp_path):
    """A genuinely worse model: training at a destructive learning rate raises the held-out
    answers' loss above the base's; the real evaluation and gate stop the build before export.
    (On a copy of the built project, which the other tests keep using.)"""
    path = Path(shutil.copytree(built[0].parent, tmp_path / "copy")) / built[0].name
    data = yaml.safe_load(path.read_text("utf-8"))
    data["train"]["overrides"] = [
        *(o for o in data["train"]["overrides"] if not o.startswith("train.learning_rate")),
        "train.learning_rate=5.0",
    ]
    data["gates"] = {"metric": "nll", "min_gain": 0, "max_forgetting": 1000}
    path.write_text(yaml.safe_dump(data), "utf-8")
    export_record = (path.parent / "export.json").read_text("utf-8")
    with pytest.raises(
        GateFailed, match="gates: the build stops before export: the tuned model is not better"
    ):
        build(path)
    assert (path.parent / "export.json").read_text("utf-8") == export_record  # export did not run
    assert json.loads((path.parent / "dossier.json").read_text("utf-8"))["status"] == "gates failed"
    gates = json.loads((path.parent / "gates.json").read_text("utf-8"))
    assert gates["passed"] is False
    evaluation = json.loads((path.parent / "evaluation.json").read_text("utf-8"))
    nll = next(r for r in evaluation["table"] if r["metric"] == "nll")
    # measured, not fed: the tuned model's loss rose on every held-out answer
    assert nll["mean_b"] > nll["mean_a"] and nll["losses"] == nll["n"]


def test_persona_template_renders_the_system_prompt_only_by_default(tiny_tokenizer):
    template = persona_template(tiny_tokenizer.chat_template, 'Say "hi".')
    rendered = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], chat_template=template, tokenize=False
    )
    assert rendered.startswith('<|im_start|>system\nSay "hi".<|im_end|>')


def test_teacher_answers_must_be_grounded_in_their_chunk():
    from tunesmith.workflows.assistant.stages import grounded_share

    passage = "A lost parcel is compensated with up to 250 euros."
    assert grounded_share("Up to 250 euros.", passage) == 1.0
    assert grounded_share("The maximum is 100 euros paid by the insurer.", passage) < 0.6
    assert grounded_share("最多赔偿250欧元。", "丢失的包裹最多赔偿250欧元。") == 1.0


def test_served_assistant_answers_with_the_persona_unless_told_otherwise(built):
    from helpers import LiveServer

    from tunesmith.workflows.assistant.build import serve_state
    from tunesmith.workflows.assistant.persona import system_prompt

    path = built[0]
    state, spec = serve_state(path)
    server = LiveServer(state)
    try:
        client = server.client()
        assert [m.id for m in client.models.list().data] == ["wren"]

        def prompt_tokens(messages):
            reply = client.chat.completions.create(model="wren", messages=messages, max_tokens=2)
            return reply.usage.prompt_tokens

        user = [{"role": "user", "content": "hi"}]
        persona = [{"role": "system", "content": system_prompt(spec)}]
        brief = [{"role": "system", "content": "Be brief."}]
        assert prompt_tokens(user) == prompt_tokens(persona + user)
        assert prompt_tokens(brief + user) < prompt_tokens(user)
    finally:
        server.stop()


def test_serve_before_build_says_what_to_do(tmp_path, tiny_model_dir):
    path = _project(tmp_path, tiny_model_dir)
    result = CliRunner().invoke(app, ["assistant", "serve", str(path)])
    assert result.exit_code == 2
    assert "no exported assistant yet; build it first: tunesmith assistant build" in result.output


def test_training_runs_with_early_stopping_and_the_forgetting_check(built):
    root = built[0].parent
    record = json.loads((root / ".assistant" / "state.json").read_text("utf-8"))["train"]["record"]
    config = yaml.safe_load((root / record["run"] / "config.yaml").read_text("utf-8"))
    assert config["train"]["early_stopping"]["metric"] == "eval_loss"
    assert config["data"]["eval"] == [str(root / "data" / "val.jsonl")]
    assert config["train"]["forgetting_eval"]["data"][0].endswith("general.txt")
    assert (root / record["run"] / "metrics.jsonl").is_file()


def test_a_dataset_info_entry_is_read_with_its_columns(tmp_path, tiny_model_dir):
    folder = tmp_path / "project"
    folder.mkdir()
    rows = [{"q": f"Question number {i}?", "a": f"Answer number {i}."} for i in range(6)]
    (folder / "extra.json").write_text(json.dumps(rows), "utf-8")
    info = {"extra": {"file_name": "extra.json", "columns": {"prompt": "q", "response": "a"}}}
    (folder / "dataset_info.json").write_text(json.dumps(info), "utf-8")
    path = _project(
        tmp_path, tiny_model_dir, data__dataset={"registry": "dataset_info.json", "name": "extra"}
    )
    build(path, until="requirements")
    requirements = json.loads((path.parent / "requirements.json").read_text("utf-8"))
    assert requirements["qa_records"] == len(FAQ) + 6


def test_a_q_and_a_file_removed_after_init_is_named_at_build(tmp_path, tiny_model_dir):
    path = _project(tmp_path, tiny_model_dir)
    (path.parent / "faq.jsonl").unlink()
    with pytest.raises(DataError, match=r"data\.qa: faq\.jsonl: file not found"):
        build(path)


def test_a_safety_sample_covers_every_category():
    from tunesmith.evaluation.safety import load_probes
    from tunesmith.workflows.assistant.evaluate import safety_sample

    categories = {p["category"] for p in load_probes()}
    sample = safety_sample(len(categories))
    assert {p["category"] for p in sample} == categories
    assert len(safety_sample(1000)) == len(load_probes())


def test_the_workshop_lists_builds_and_shows_the_dossier(built, tmp_path):
    """The doors' actions (UI tab, MCP tools): the project is found, its status read from the
    dossier, a build started from the workshop runs to the end, and the tab embeds the page."""
    import time

    from tunesmith.ui import assistant_tab, strings
    from tunesmith.ui.common import Ctx
    from tunesmith.workshop import actions
    from tunesmith.workshop.workspace import Workspace

    root = Path(shutil.copytree(built[0].parent, tmp_path / "ws" / "parcels"))
    ws = Workspace(tmp_path / "ws")
    assert actions.assistant_projects(ws) == ["parcels"]
    state = actions.assistant_status(ws, "parcels")
    assert state["status"] == "built" and state["dossier"] == "parcels/dossier.html"
    assert {"requirements", "train", "export"} <= set(state["stages"])
    with pytest.raises(TunesmithError, match=r"no assistant\.yaml"):
        actions.assistant_status(ws, ".")
    with pytest.raises(TunesmithError, match="from_stage: got 'deploy'"):
        actions.assistant_build(ws, "parcels", "deploy")

    before = (root / "dossier.json").stat().st_mtime
    started = actions.assistant_build(ws, "parcels", "gates")
    for _ in range(600):
        job = actions.assistant_status(ws, "parcels")["job"]
        if job["status"] != "running":
            break
        time.sleep(0.5)
    assert job["status"] == "finished", (root / started["log"]).read_text("utf-8")[-2000:]
    assert (root / "dossier.json").stat().st_mtime > before  # the build rewrote the dossier
    log = (root / started["log"]).read_text("utf-8")
    assert "6/8 evaluate: unchanged, skipped" in log and "8/8 export" in log  # --from gates

    ctx = Ctx(ws, strings.table("en"), "en")
    state = actions.assistant_status(ws, "parcels")
    text = assistant_tab.summary(ctx, state)
    assert "`built`" in text and "build: `finished`" in text
    assert "✔ better: the tuned model is within gates.min_gain" in text
    page, mtime = assistant_tab.dossier(ctx, state)
    assert "<iframe" in page and "Base vs tuned on the held-out set" in page and mtime
