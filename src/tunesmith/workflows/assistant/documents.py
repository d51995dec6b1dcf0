"""Plain documents to text (pypdf, python-docx, Beautiful Soup: the `assistant` extra), and text
to chunks a teacher can ask questions about."""

from __future__ import annotations

import re
from pathlib import Path

from tunesmith.utils.errors import DataError

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
DOCUMENT_SUFFIXES = (*TEXT_SUFFIXES, ".pdf", ".docx", ".html", ".htm")
_EXTRA = "pip install 'tunesmith[assistant]'"


def read_document(path: str | Path) -> str:
    """The document's text; one sentence naming the file when it is missing, unreadable, empty or
    of a format no converter reads."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in DOCUMENT_SUFFIXES:
        raise DataError(
            f"{path}: unsupported document format '{suffix or '(none)'}'; documents can be "
            f"{', '.join(DOCUMENT_SUFFIXES)} (Q&A files go under data.qa)"
        )
    if not path.is_file():
        raise DataError(f"{path}: document not found")
    try:
        text = _convert(path, suffix)
    except DataError:
        raise
    except ImportError as exc:
        raise DataError(f"{path}: reading {suffix} needs {exc.name}: {_EXTRA}") from None
    except Exception as exc:  # a converter's own error: the file is damaged or not what it says
        raise DataError(
            f"{path}: cannot be read as {suffix} ({type(exc).__name__}: {exc})"
        ) from None
    text = _tidy(text)
    if not text:
        raise DataError(f"{path}: the document is empty (no text to learn from)")
    return text


def _convert(path: Path, suffix: str) -> str:
    if suffix in TEXT_SUFFIXES:
        try:
            return path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if suffix == ".pdf":
        from pypdf import PdfReader

        return "\n\n".join(page.extract_text() or "" for page in PdfReader(path).pages)
    if suffix == ".docx":
        import docx

        return "\n\n".join(p.text for p in docx.Document(str(path)).paragraphs)
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(path.read_bytes(), "html.parser")
    for tag in soup(["script", "style", "nav", "header", "footer"]):
        tag.decompose()
    blocks = soup.find_all(["h1", "h2", "h3", "h4", "p", "li", "td", "pre"])
    if blocks:
        return "\n\n".join(b.get_text(" ", strip=True) for b in blocks)
    return soup.get_text("\n")


def _tidy(text: str) -> str:
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.replace("\r", "").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


_SENTENCE = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])")


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Chunks of at most ~max_chars, cut at paragraph ends, then sentence ends; a Markdown
    heading stays with the paragraph under it."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    pieces: list[str] = []
    for p in paragraphs:
        if len(p) <= max_chars:
            pieces.append(p)
            continue
        pieces += [s for s in _SENTENCE.split(p) if s.strip()]
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        heading = current.lstrip().startswith("#") and "\n" not in current.strip()
        if current and len(current) + len(piece) + 2 > max_chars and not heading:
            chunks.append(current.strip())
            current = ""
        current = f"{current}\n\n{piece}" if current else piece
    if current.strip():
        chunks.append(current.strip())
    return chunks
