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
    pictures = "".join(png_img(p.read_bytes(), p.stem) for p in images if p and p.is_file())
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1>"
        f"{facts_list(facts)}{table(headers, rows)}{pictures}</body></html>\n"
    )


# --- pieces every report page builds from (eval report, data inspection, quickstart) ---------


def esc(value: object) -> str:
    """Text made safe for HTML; None shows as nothing."""
    return html.escape("" if value is None else str(value))


def facts_list(facts: dict[str, object]) -> str:
    """Name/value pairs as a definition list."""
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts.items())
    return f"<dl>{items}</dl>"


def table(
    headers: list[str],
    rows: list[list[object]],
    css: str = "",
    numbers: bool = False,
    empty: str | None = None,
) -> str:
    """One table. A cell given as (text, css_class) gets that class; with numbers=True, int and
    float cells are right-aligned (class num) and floats shown to 4 significant digits; with
    `empty`, no rows gives that sentence instead of a bare header."""
    if not rows and empty is not None:
        return f"<p>{esc(empty)}</p>"
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(c, numbers) for c in row) + "</tr>" for row in rows)
    klass = f" class='{css}'" if css else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def png_img(png: bytes | None, alt: str = "plot") -> str:
    """A PNG embedded in the page (reports are single files); nothing without one."""
    if not png:
        return ""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _cell(cell: object, numbers: bool) -> str:
    if isinstance(cell, tuple):
        text, css = cell
        return f"<td class='{css}'>{esc(text)}</td>"
    if numbers and isinstance(cell, int | float):
        return f"<td class='num'>{f'{cell:.4g}' if isinstance(cell, float) else esc(cell)}</td>"
    return f"<td>{esc(cell)}</td>"
