"""The web workshop in a real browser: Playwright drives Debian's chromium (Playwright's own
browser download is not reachable here; `make test` installs chromium where apt-get can).

One workspace for the module, the UI served in this process on a free port, the tests in order:
train from the Train tab and watch the curve, stop and resume, a queued second run, its report
after a reload, chat, a refused path in the Data tab, arena votes, export and the Chinese page.
Screenshots of each tab go to tmp_path, or to docs/screenshots/ with TUNESMITH_SCREENSHOTS=1
(how the README's pictures are made).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import assistant_project, write_alpaca

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # without these the closed network refuses chromium
    "--disable-component-update",
    "--disable-sync",
]
DOCS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM.exists():
        pytest.skip("no browser: /usr/bin/chromium is missing (make test installs it via apt-get)")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def ui(tmp_path_factory, tiny_model_dir):
    """`tunesmith ui` as a user starts it, on a free port over a fresh workspace."""
    import httpx

    from tunesmith.workshop import actions
    from tunesmith.workshop.workspace import Workspace

    root = tmp_path_factory.mktemp("workspace")
    shutil.copytree(tiny_model_dir, root / "model")
    write_alpaca(root / "train.jsonl")
    ws = Workspace(root)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "tunesmith.cli.main", "ui", "--workspace", str(root)]
    log = (root.parent / "ui.log").open("wb")
    server = subprocess.Popen([*command, "--port", str(port)], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/en/config", timeout=2).status_code == 200
        except httpx.HTTPError:
            return server.poll() is not None  # exited: fail below with its log

    _until(up, "the UI server", 120)
    assert server.poll() is None, (root.parent / "ui.log").read_text()[-2000:]
    yield url, ws
    for name in actions.queued(ws)["running"]:  # leave no training process behind
        actions.stop(ws, name)
    server.terminate()
    server.wait(30)
    log.close()


@pytest.fixture(scope="module")
def page(browser, ui):
    url, _ = ui
    tab = browser.new_page(viewport={"width": 1400, "height": 1000})
    tab.goto(f"{url}/en/")
    tab.wait_for_selector("#runs-table", timeout=60_000)
    yield tab
    tab.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    if os.environ.get("TUNESMITH_SCREENSHOTS"):
        DOCS.mkdir(parents=True, exist_ok=True)
        return DOCS
    return tmp_path_factory.mktemp("screenshots")


def _until(predicate, what: str, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _text(page, selector: str) -> str:
    return page.inner_text(selector)


def _wait_text(page, selector: str, pattern: str, seconds: float = 120) -> str:
    try:
        return _until(
            lambda: re.search(pattern, _text(page, selector)) and _text(page, selector),
            f"{selector} to show {pattern!r}",
            seconds,
        )
    except AssertionError as timed_out:  # what the page shows when the wait ends
        raise AssertionError(f"{timed_out} (shows {_text(page, selector)[:200]!r})") from None


def _shot(page, path: Path) -> None:
    """The whole page, with the viewport as tall as the page while it is taken: chromium
    paints a report's sandboxed frame (a frame of its own process) only inside the viewport."""
    size = page.viewport_size
    page.set_viewport_size(
        {**size, "height": page.evaluate("document.documentElement.scrollHeight")}
    )
    page.wait_for_timeout(300)
    page.screenshot(path=path, full_page=True)
    page.set_viewport_size(size)


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(300)


def _fill(page, key: str, value: str) -> None:
    """A form field by its config key (train_tab gives each the id f-<key with dashes>)."""
    box = page.locator(f"#f-{key.replace('.', '-')} input")
    box.fill(value)
    box.press("Tab")  # change events fire on blur


def _points(page) -> int:
    found = re.search(r"(\d+) points", _text(page, "#run-points"))
    return int(found.group(1)) if found else 0


def test_train_from_the_form_watch_the_curve_stop_and_resume(page, ui, shots):
    _, ws = ui
    _tab(page, "Train")
    for label, value in (
        ("model.name_or_path", "model"),
        ("data.train", "train.jsonl"),
        ("train.max_steps", "3000"),
        ("train.batch_size", "2"),
        ("train.save_steps", "1000"),
        ("output.name", "live"),
    ):
        _fill(page, label, value)
    _until(lambda: "name: live" in _text(page, "#train-yaml"), "the YAML to follow the form")
    page.click("#train-plan")
    _wait_text(page, "#train-plan-out", "Memory", 60)
    page.click("#train-start")
    _wait_text(page, "#train-message", "Started run live")
    _wait_text(page, "#train-status", r"step \d+")
    _shot(page, shots / "train.png")

    _tab(page, "Runs")
    page.get_by_role("button", name="Refresh").first.click()
    _until(lambda: _points(page) >= 2, "the curve's first points")
    first = _points(page)
    _until(lambda: _points(page) > first, "the curve to get more points while it trains")
    _shot(page, shots / "runs.png")

    _tab(page, "Train")
    page.click("#train-stop")
    _wait_text(page, "#train-status", r"live: stopped", 120)
    assert (ws.runs_dir / "live" / "checkpoints").is_dir()

    _tab(page, "Runs")
    page.click("#runs-resume")
    _wait_text(page, "#runs-message", "✓")
    _wait_text(page, "#run-facts", "running", 60)


def test_a_second_run_waits_in_the_queue_until_the_first_stops(page, ui):
    _, ws = ui
    _tab(page, "Train")
    _fill(page, "output.name", "short")
    _fill(page, "train.max_steps", "6")
    _until(lambda: "name: short" in _text(page, "#train-yaml"), "the YAML to follow the form")
    page.click("#train-start")
    _wait_text(page, "#train-message", "queued")
    _wait_text(page, "#train-queue", "short", 20)
    # the resumed run takes its steps before Stop (a signal during its start-up is not the
    # case under test here)
    _until(
        lambda: re.search(r"\d+/3000 \[", page.input_value("#train-log textarea")),
        "the resumed run's progress bar",
    )
    page.click("#train-stop")  # stops live; the queue then starts short
    _wait_text(page, "#train-message", "SIGTERM sent", 30)
    _wait_text(page, "#train-status", r"short: finished", 180)
    from tunesmith.workshop import actions

    assert actions.status(ws, "live")["status"] == "stopped"
    assert (ws.runs_dir / "short" / "adapter").is_dir()


def _choose(page, key: str, option: str) -> None:
    """A dropdown of the form by its config key."""
    page.locator(f"#f-{key.replace('.', '-')} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    page.wait_for_timeout(300)


def test_a_stage_shows_its_own_settings_in_the_form(page):
    _tab(page, "Train")
    assert not page.locator("#stage-cls").is_visible()
    _choose(page, "train.stage", "cls")
    _until(lambda: page.locator("#stage-cls").is_visible(), "the cls section to show")
    assert not page.locator("#stage-preference").is_visible()
    _fill(page, "train.cls.max_chunks", "4")
    _until(lambda: "max_chunks: 4" in _text(page, "#train-yaml"), "the YAML to hold cls")
    _choose(page, "train.stage", "dpo")
    _until(lambda: page.locator("#stage-preference").is_visible(), "the preference section")
    assert not page.locator("#stage-cls").is_visible()
    _until(lambda: "max_chunks" not in _text(page, "#train-yaml"), "cls to leave the YAML")
    _choose(page, "train.stage", "sft")  # as the later tests expect the form
    _until(lambda: "stage:" not in _text(page, "#train-yaml"), "the YAML back to sft")


def test_evaluate_and_open_the_report(page, ui, shots):
    _, ws = ui
    # a reload reads the workspace again: both runs listed, the newest one's page shown
    page.reload()
    page.wait_for_selector("#runs-table", timeout=60_000)
    _wait_text(page, "#run-facts", r"short\s+Status: finished", 30)
    assert "live" in _text(page, "#runs-table") and "short" in _text(page, "#runs-table")
    page.click("#runs-evaluate")  # opens the Evaluate tab with the run chosen
    _until(lambda: page.input_value("#eval-run input") == "short", "Evaluate to open short", 20)
    page.fill("#eval-overrides input", "eval.data=[train.jsonl] eval.max_new_tokens=8")
    page.click("#eval-start")
    _wait_text(page, "#eval-message", "eval started")
    state = _wait_text(page, "#eval-status", "finished|failed", 180)
    assert "finished" in state, state
    assert (ws.runs_dir / "short" / "reports" / "eval.html").is_file()
    page.wait_for_selector("#eval-report iframe", timeout=20_000)
    _shot(page, shots / "evaluate.png")
    _tab(page, "Runs")  # the finished run's page takes the new report without a Refresh
    _report_shown(page, "#run-report", 30)


def _report_shown(page, where: str, seconds: float) -> None:
    """The run's eval report, rendered inside its frame."""
    heading = page.frame_locator(f"{where} iframe").get_by_text("tunesmith eval: short")
    heading.wait_for(timeout=seconds * 1000)


def _answer(page, side: str) -> str:
    """The model's reply in one chat column (the bubbles after the user's)."""
    rows = page.locator(f"{side} .bot-row")
    return rows.first.inner_text().strip() if rows.count() else ""


def test_chat_with_the_tuned_run_beside_its_base(page, shots):
    _tab(page, "Runs")
    page.click("#runs-chat")  # opens the Chat tab with the run chosen
    _until(lambda: page.input_value("#chat-run input") == "short", "Chat to open short", 20)
    page.fill("#chat-input textarea", "hello who are you?")
    page.click("#chat-send")
    for side in ("#chat-base", "#chat-tuned"):
        _wait_text(page, f"{side} .user-row", "hello who are you", 30)
        _until(lambda side=side: _answer(page, side), f"{side} to answer", 90)
    assert "⚠" not in _text(page, "#chat-message")
    _shot(page, shots / "chat.png")


def test_data_tab_refuses_a_path_outside_and_inspects_a_file(page, ui, shots):
    _tab(page, "Data")
    box = page.locator("#data-file input")
    box.fill("../../etc/passwd")
    box.press("Enter")
    _wait_text(page, "#data-message", r"'\.\.' is not allowed", 30)
    box.fill("train.jsonl")
    box.press("Enter")
    page.click("#data-inspect")
    _wait_text(page, "#data-headline", "8 records read", 60)
    _shot(page, shots / "data.png")

    # a dataset_info.json entry, read with its format and columns as LLaMA-Factory reads it
    _, ws = ui
    (ws.root / "lf").mkdir()
    five = (ws.root / "train.jsonl").read_text(encoding="utf-8").splitlines()[:5]
    (ws.root / "lf" / "qa.jsonl").write_text("\n".join(five) + "\n", encoding="utf-8")
    registry = {
        "qa": {"file_name": "qa.jsonl", "columns": {"prompt": "instruction", "response": "output"}}
    }
    (ws.root / "lf" / "dataset_info.json").write_text(json.dumps(registry), encoding="utf-8")
    box.fill("lf/dataset_info.json::qa")
    box.press("Enter")
    page.click("#data-inspect")
    _wait_text(page, "#data-headline", "5 records read", 60)
    assert "⚠" not in _text(page, "#data-message")


def test_arena_votes_are_counted_and_read_back(page, ui, shots):
    _, ws = ui
    page.reload()  # the arena's run list is read on load: short, trained since the server began
    page.wait_for_selector("#runs-table", timeout=60_000)
    _tab(page, "Arena")
    _until(lambda: page.input_value("#arena-run input") == "short", "the arena to offer short", 20)
    page.fill("#arena-own textarea", "What is 2 plus 2?")
    votes = ws.runs_dir / "short" / "arena" / "votes.jsonl"
    wins = losses = 0
    for button, shown_as, reason in (("1", 0, "clearer"), ("tie", None, ""), ("2", 1, "")):
        page.click("#arena-next")
        _wait_text(page, "#arena-prompt", "2 plus 2", 60)  # a vote clears the pair it used
        _until(lambda: page.input_value("#arena-left textarea"), "the answers", 60)
        answers = [page.input_value(f"#arena-{s} textarea") for s in ("left", "right")]
        page.fill("#arena-reason textarea", reason)
        page.click(f"#arena-vote-{button}")
        _wait_text(page, "#arena-message", "Vote stored")
        assert page.input_value("#arena-left textarea") == ""
        stored = json.loads(votes.read_text().splitlines()[-1])
        assert stored["prompt"] == "What is 2 plus 2?" and stored["reason"] == reason
        if shown_as is None:
            assert stored["winner"] == "tie"
        else:  # the side clicked is the answer stored as the winner (which model: blind)
            assert stored["answers"][stored["winner"]] == answers[shown_as]
        wins += stored["winner"] == "run:short"
        losses += stored["winner"] == "base"
    assert len(votes.read_text().splitlines()) == 3 and wins + losses == 2
    stats = _wait_text(page, "#arena-stats", f"{wins} wins, {losses} losses, 1 ties")
    assert f"win rate {wins / 2:.0%}" in stats and "more decisive votes" in stats
    page.click("#arena-export")
    _wait_text(page, "#arena-message", "2 preference pairs")
    pairs = (ws.runs_dir / "short" / "arena" / "pairs.jsonl").read_text().splitlines()
    assert len(pairs) == 2
    _shot(page, shots / "arena.png")


def test_an_assistant_project_shows_its_stages_and_dossier(page, ui, shots):
    from tunesmith.workflows.assistant.build import build

    _, ws = ui
    spec = assistant_project(ws.root, ws.root / "model")  # ws.root/project/assistant.yaml
    build(spec, until="strategy")  # three stages: the dossier of a partial build
    _tab(page, "Assistant")
    page.locator("#tab-assistant button", has_text="Refresh").click()
    _until(lambda: page.input_value("#assistant-project input") == "project", "the project", 20)
    state = _wait_text(page, "#assistant-status", "stopped after strategy", 30)
    assert "requirements → model → strategy" in state
    heading = page.frame_locator("#assistant-dossier iframe").get_by_text("Wren: parcels")
    heading.wait_for(timeout=30_000)
    _shot(page, shots / "assistant.png")


def test_export_tab_and_the_chinese_page(page, ui, shots):
    url, ws = ui
    _tab(page, "Export / Serve")
    assert page.input_value("#export-run input") == "short"
    page.click("#export-start")
    state = _wait_text(page, "#export-status", "finished|failed", 180)
    assert "finished" in state, state
    _wait_text(page, "#export-facts", "verification", 30)
    assert (ws.runs_dir / "short" / "export" / "export.json").is_file()
    _shot(page, shots / "export.png")
    page.goto(f"{url}/zh/")
    page.wait_for_selector("#runs-table", timeout=60_000)
    assert page.get_by_role("tab", name="训练").count() == 1
    assert page.get_by_role("tab", name="Train").count() == 0
    _wait_text(page, "#run-facts", r"short\s+状态", 30)
    _report_shown(page, "#run-report", 30)
    _shot(page, shots / "runs-zh.png")
