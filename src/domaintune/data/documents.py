"""Raw business documents in: PDF, DOCX, HTML, Markdown and plain text, cut into token chunks.

Each chunk becomes a raw-text row whose source names the file, the chunk number (as `line`)
and the page (PDF) or section heading (DOCX, HTML, Markdown) it starts in. A document that
cannot be read (malformed or encrypted PDF, binary file named .txt, no text at all) is
reported as skipped with the reason, and the run goes on with the rest; so is every file in a
documents folder that is not a document (a data file, an image), and a DOCX whose parts would
unpack to more than `documents.max_member_mb` (a zip bomb), or a PDF whose text passes it. DOCX text includes tables, headers
and footers; HTML text is every text outside scripts, styles and page chrome (nav, header, footer).
"""
from __future__ import annotations

import glob
import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from domaintune.config import DocumentsConfig
from domaintune.core.errors import DomaintuneError

DOCUMENT_SUFFIXES = (".pdf", ".docx", ".html", ".htm", ".md", ".markdown", ".txt")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")  # readers.SUFFIXES; data files, not documents
_WORDS = re.compile(r"\S+")
_MARKDOWN_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
# Token offsets of a text: (start, end) character spans, one per token.
Tokenize = Callable[[str], list[tuple[int, int]]]


@dataclass(frozen=True)
class Section:
    text: str
    where: dict  # {"page": 3} or {"section": "Fees"}: where the text sits in its document


class UnreadableDocument(Exception):
    """A document that is skipped; the message says why."""


def is_document(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in DOCUMENT_SUFFIXES


def expand_documents(patterns: list[str]) -> tuple[list[Path], list[dict]]:
    """The document files the patterns name (folders are searched recursively), and skip notices
    for patterns that name nothing to read (an empty folder)."""
    paths: list[Path] = []
    skipped: list[dict] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if any(c in pattern for c in "*?[") else [pattern]
        if not matches:
            raise DomaintuneError(f"{pattern}: no files match this pattern")
        for match in map(Path, matches):
            if match.is_dir():
                files = sorted(p for p in match.rglob("*") if p.is_file())
                found = [p for p in files if p.suffix.lower() in DOCUMENT_SUFFIXES]
                if not found:
                    skipped.append({"file": str(match), "reason": f"folder has no documents ({', '.join(DOCUMENT_SUFFIXES)})"})
                skipped += [{"file": str(p), "reason": _not_a_document(p)} for p in files if p not in found]
                paths += [p for p in found if p not in paths]
            elif not match.exists():
                raise DomaintuneError(f"{match}: file not found")
            elif match not in paths:
                paths.append(match)
    return paths, skipped


def _not_a_document(path: Path) -> str:
    if path.suffix.lower() in DATA_SUFFIXES:
        return "a data file inside a documents folder is not read as documents; list it in data.train to read its rows"
    return f"not a document type ({', '.join(DOCUMENT_SUFFIXES)})"


def read_document(path: Path, max_member_mb: float) -> list[Section]:
    """The document's text in sections, or UnreadableDocument saying why it can't be read."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".pdf":
            sections = _read_pdf(path, max_member_mb)
        elif suffix == ".docx":
            _check_unpacked_sizes(path, max_member_mb)
            sections = _read_docx(path)
        elif suffix in (".html", ".htm"):
            sections = _read_html(_decode(path))
        else:
            sections = _read_markdown(_decode(path))
    except UnreadableDocument:
        raise
    except Exception as error:  # parsers raise many types for a broken file; any of them means "skip it"
        raise UnreadableDocument(f"cannot read {suffix[1:].upper()} ({type(error).__name__}: {error})") from None
    sections = [section for section in sections if section.text.strip()]
    if not sections:
        raise UnreadableDocument("no text found (a scanned PDF needs OCR first)" if suffix == ".pdf" else "no text found")
    return sections


def _decode(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise UnreadableDocument("binary file, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UnreadableDocument(f"not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start})") from None


def _read_pdf(path: Path, max_text_mb: float) -> list[Section]:
    from pypdf import PdfReader

    # pypdf logs each repair it tries on a broken file ("EOF marker not found", ...); the skip
    # notice says it once, in words the user can act on.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    reader = PdfReader(path)
    if reader.is_encrypted:
        raise UnreadableDocument("encrypted PDF; decrypt it first")
    # pypdf caps each decompressed stream (75 MB); the running total of text is capped here, so a small
    # file of many compressed pages (a PDF bomb) is skipped instead of filling memory.
    sections, characters = [], 0
    for number, page in enumerate(reader.pages, start=1):
        text = page.extract_text() or ""
        characters += len(text)
        if characters > max_text_mb * 1_000_000:
            raise UnreadableDocument(f"its text passes documents.max_member_mb ({max_text_mb:g} MB) by page {number}")
        sections.append(Section(text, {"page": number}))
    return sections


def _check_unpacked_sizes(path: Path, max_member_mb: float) -> None:
    """A DOCX is a zip; refuse one whose parts declare more than the cap before anything is unpacked.
    Reading stops at a part's declared size, so a part that lies about it cannot grow past the cap."""
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            if member.file_size > max_member_mb * 1_000_000:
                raise UnreadableDocument(
                    f"{member.filename} unpacks to {member.file_size / 1_000_000:.1f} MB, "
                    f"over documents.max_member_mb ({max_member_mb:g} MB)"
                )


def _read_docx(path: Path) -> list[Section]:
    import docx
    from docx.table import Table

    document = docx.Document(str(path))
    sections: list[Section] = []
    heading, lines = None, []
    for block in document.iter_inner_content():  # paragraphs and tables, in reading order
        if isinstance(block, Table):
            lines += _table_lines(block)
            continue
        if block.style is not None and block.style.name.startswith("Heading") and block.text.strip():
            sections.append(Section("\n".join(lines), {"section": heading}))
            heading, lines = block.text.strip(), []
        lines.append(block.text)
    sections.append(Section("\n".join(lines), {"section": heading}))
    # Headers and footers repeat on every page; each distinct one is read once.
    for part in ("header", "footer"):
        texts = dict.fromkeys(
            "\n".join(paragraph.text for paragraph in getattr(section, part).paragraphs) + "\n"
            + "\n".join(line for table in getattr(section, part).tables for line in _table_lines(table))
            for section in document.sections
        )
        sections += [Section(text, {"section": part}) for text in texts]
    return sections


def _table_lines(table) -> list[str]:
    """One line per row, cells joined by ' | ' (a merged cell, repeated by python-docx, once)."""
    lines = []
    for row in table.rows:
        cells = [cell.text.strip() for cell in row.cells]
        lines.append(" | ".join(dict.fromkeys(cell for cell in cells if cell)))
    return lines


_BLOCKS = [
    "p", "div", "li", "ul", "ol", "dl", "dt", "dd", "table", "tr", "pre", "blockquote", "section", "article", "main",
    "aside", "figure", "figcaption", "caption", "address", "form", "fieldset", "details", "summary", "br", "hr",
]
_HEADINGS = ["h1", "h2", "h3", "h4", "h5", "h6"]
_HEADING_MARK = "\x00heading\x00"  # cannot occur in parsed HTML text (the parser drops NUL)


def _read_html(html: str) -> list[Section]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "nav", "header", "footer"]):
        tag.decompose()  # code and page chrome, not content
    # Every text counts, wherever it sits (div, span, th, dd, ...): block elements become line
    # breaks, table cells spaces, headings marked lines that start a section.
    for tag in soup(_BLOCKS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    for tag in soup(["td", "th"]):
        tag.insert_after(" ")
    for tag in soup(_HEADINGS):
        tag.insert_before("\n" + _HEADING_MARK)
        tag.insert_after("\n")
    sections: list[Section] = []
    heading, lines = None, []
    for line in soup.get_text().split("\n"):
        text = " ".join(line.split())
        if line.startswith(_HEADING_MARK):
            text = " ".join(line[len(_HEADING_MARK):].split())
            sections.append(Section("\n".join(lines), {"section": heading}))
            heading, lines = text, []
        if text:
            lines.append(text)
    sections.append(Section("\n".join(lines), {"section": heading}))
    return sections


def _read_markdown(text: str) -> list[Section]:
    sections: list[Section] = []
    heading, lines = None, []
    for line in text.splitlines():
        match = _MARKDOWN_HEADING.match(line)
        if match:
            sections.append(Section("\n".join(lines), {"section": heading}))
            heading, lines = match.group(1), []
        lines.append(line)
    sections.append(Section("\n".join(lines), {"section": heading}))
    return sections


def word_spans(text: str) -> list[tuple[int, int]]:
    """Whitespace words as stand-in tokens when no tokenizer is at hand."""
    return [match.span() for match in _WORDS.finditer(text)]


def chunk_sections(sections: list[Section], size: int, overlap: int, tokenize: Tokenize) -> Iterator[tuple[str, dict]]:
    """(chunk text, where it starts): windows of `size` tokens, each repeating `overlap` tokens of the last.
    A chunk never spans two sections, so its page or heading is exact."""
    for section in sections:
        spans = tokenize(section.text)
        start = 0
        while start < len(spans):
            end = min(start + size, len(spans))
            yield section.text[spans[start][0] : spans[end - 1][1]], section.where
            if end == len(spans):
                break
            start = end - overlap


def read_document_rows(
    patterns: list[str],
    size: int,
    overlap: int,
    tokenize: Tokenize | None = None,
    max_member_mb: float = DocumentsConfig.model_fields["max_member_mb"].default,
) -> tuple[list[dict], list[dict]]:
    """Raw-text rows, one per chunk, and the documents skipped with their reason."""
    tokenize = tokenize or word_spans
    paths, skipped = expand_documents(patterns)
    rows: list[dict] = []
    for path in paths:
        try:
            sections = read_document(path, max_member_mb)
        except UnreadableDocument as error:
            skipped.append({"file": str(path), "reason": str(error)})
            continue
        for number, (text, where) in enumerate(chunk_sections(sections, size, overlap, tokenize), start=1):
            where = {key: value for key, value in where.items() if value is not None}
            rows.append({"text": text, "source": {"file": str(path), "line": number, **where}})
    return rows, skipped
