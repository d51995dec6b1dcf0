"""HTML reports: a page a person reads, written beside a JSON file with the same numbers."""

from __future__ import annotations

import base64
import html
from pathlib import Path

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; width: 100%; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 6px 8px; vertical-align: top; text-align: left; }
th { background: #f3f3f3; } td.hit { background: #e6f6e6; } td.miss { background: #fbeaea; }
dl { display: grid; grid-template-columns: max-content auto; gap: 4px 16px; }
dt { font-weight: 600; } img { max-width: 100%; }
"""


def html_page(
    title: str,
    facts: dict[str, object],
    headers: list[str],
    rows: list[list[object]],
    images: list[Path] = (),
) -> str:
    """A self-contained page: facts as a list, one table, embedded PNG images.

    A cell given as (text, css_class) is rendered with that class (e.g. 'hit' / 'miss').
    """
    fact_items = "".join(
        f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in facts.items()
    )
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    pictures = "".join(
        f'<img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}">'
        for p in images
        if p and p.is_file()
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<dl>{fact_items}</dl><table><tr>{head}</tr>{body}</table>{pictures}</body></html>\n"
    )


def _cell(cell: object) -> str:
    if isinstance(cell, tuple):
        text, css = cell
        return f"<td class='{css}'>{html.escape(str(text))}</td>"
    return f"<td>{html.escape(str(cell))}</td>"
