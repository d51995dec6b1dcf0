"""README.zh-CN.md follows README.md: same sections, command blocks and `keys`, links both ways.

The Chinese README is a section-by-section translation; commands, config keys and paths stay
as in English. These checks compare structure only, so a section or command added to one
README without the other fails here instead of drifting silently.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EN = ROOT / "README.md"
ZH = ROOT / "README.zh-CN.md"

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")


def _sections(text: str) -> list[str]:
    """`## ` headings outside fenced code blocks, in order."""
    heads, fence = [], None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and line.strip() == fence:
            fence = None
        elif fence is None and line.startswith("## "):
            heads.append(line[3:].strip())
    return heads


def _code_blocks(text: str) -> list[str]:
    """Every fenced code block (info string and body, indentation trimmed), in order."""
    blocks: list[str] = []
    cur: list[str] | None = None
    fence = None
    for line in text.splitlines():
        if cur is None:
            m = _FENCE.match(line)
            if m:
                fence, cur = m.group(1), [line.strip()]
        elif line.strip() == fence:
            blocks.append("\n".join([*cur, fence]))
            cur = None
        else:
            cur.append(line.rstrip())
    assert cur is None, "unclosed code fence"
    return blocks


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_same_number_of_sections():
    en, zh = _sections(_read(EN)), _sections(_read(ZH))
    assert len(zh) == len(en), (
        f"README.md has {len(en)} '## ' sections, README.zh-CN.md {len(zh)}:\nEN: {en}\nZH: {zh}"
    )


def test_same_code_blocks_in_order():
    en, zh = _code_blocks(_read(EN)), _code_blocks(_read(ZH))
    assert len(zh) == len(en), f"{len(en)} code blocks in README.md, {len(zh)} in README.zh-CN.md"
    for i, (e, z) in enumerate(zip(en, zh, strict=True)):
        assert z == e, f"code block {i + 1} differs:\n--- README.md\n{e}\n--- README.zh-CN.md\n{z}"


def test_code_blocks_sit_in_matching_sections():
    """The k-th section holds as many code blocks in both READMEs."""

    def per_section(text: str) -> list[int]:
        counts, fence = [0], None
        for line in text.splitlines():
            m = _FENCE.match(line)
            if fence is None and m:
                fence = m.group(1)
                counts[-1] += 1
            elif fence is not None and line.strip() == fence:
                fence = None
            elif fence is None and line.startswith("## "):
                counts.append(0)
        return counts

    assert per_section(_read(ZH)) == per_section(_read(EN))


def _inline_code_per_section(text: str) -> list[set[str]]:
    """The `inline code` spans (whitespace collapsed) of each section, fenced blocks left out."""
    parts, fence = [[]], None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None and line.strip() == fence:
            fence = None
        elif fence is None and line.startswith("## "):
            parts.append([])
        elif fence is None:
            parts[-1].append(line)
    return [set(re.findall(r"`([^`]+)`", re.sub(r"\s+", " ", "\n".join(p)))) for p in parts]


def test_keys_commands_and_paths_kept_per_section():
    """Every `key`, `command` and `path` of an English section is in its Chinese one, as is."""
    en, zh = _inline_code_per_section(_read(EN)), _inline_code_per_section(_read(ZH))
    assert len(zh) == len(en)
    heads = ["(top)", *_sections(_read(EN))]
    for head, e, z in zip(heads, en, zh, strict=True):
        assert not e - z, f"section {head!r}: missing in README.zh-CN.md: {sorted(e - z)}"
        assert not z - e, f"section {head!r}: not in README.md: {sorted(z - e)}"


def test_readmes_link_to_each_other_at_the_top():
    en_top = _read(EN).splitlines()[:5]
    zh_top = _read(ZH).splitlines()[:5]
    assert any("(README.zh-CN.md)" in line for line in en_top)
    assert any("(README.md)" in line for line in zh_top)


def test_opening_commands_come_first():
    """Both READMEs open with the quickstart / test commands before any section."""
    for path in (EN, ZH):
        text = _read(path)
        first_block = _code_blocks(text)[0]
        assert "make quickstart" in first_block and "make test" in first_block
        assert text.index(first_block.splitlines()[0]) < text.index("\n## ")
