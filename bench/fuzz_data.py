"""Fuzz data preparation with malformed and hostile files: `python bench/fuzz_data.py --cases 10000`.

Each case is one or two files of a supported type (JSONL, JSON, CSV, Parquet, Markdown, text,
HTML, DOCX, PDF), built from valid rows and then mutated: truncated, bytes flipped, inserted or
deleted, re-encoded (UTF-16, Latin-1), a BOM added, line endings mixed, values made huge, deeply
nested or of the wrong type, keys duplicated, XML entities that expand without end. Each case runs
`prepare_dataset`, what `domaintune data prepare` runs, and must keep these invariants:

- it ends with success (exit 0) or a `DomaintuneError` (exit 2, one clear message), never another
  exception, which the CLI would print as a traceback;
- every row read is accounted for: read = kept (in a split) + removed + rejected, and each removed
  or rejected record names its file, line and reason; a JSONL file's rows are its non-blank lines;
- every document is either read or listed as skipped with the reason;
- nothing hangs: each case finishes within CASE_SECONDS.

tests/test_data_fuzz.py runs a few hundred cases of the same generator.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import signal
import sys
import tempfile
import time
import traceback
import zipfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from rich.console import Console

from domaintune.config import DataConfig
from domaintune.core.errors import DomaintuneError
from domaintune.data.prepare import SPLITS, prepare_dataset

CASE_SECONDS = 30
TABLES = ("jsonl", "json", "csv", "parquet")
DOCUMENTS = ("md", "txt", "html", "docx", "pdf")

# --- valid seeds ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
words = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=60)
# Mostly text, as real rows are; sometimes a value of the wrong type.
cell = st.one_of(words, words, words, st.sampled_from(["", " ", "null"]), json_values)
row = st.fixed_dictionaries({"prompt": cell, "completion": cell}, optional={"extra": json_values, "text": cell})


@st.composite
def hostile_value(draw) -> str | list:
    """A value made to break parsers and filters: huge, deep or PII-dense."""
    kind = draw(st.sampled_from(["huge", "deep", "keys", "pii"]))
    if kind == "huge":
        return draw(st.sampled_from(["x", "a ", "\u00e9", "-----BEGIN RSA PRIVATE KEY-----", "1."])) * draw(
            st.sampled_from([1_000, 140_000])  # 140,000: over the CSV field limit
        )
    if kind == "deep":
        depth = draw(st.sampled_from([60, 70, 500]))
        return json.loads("[" * depth + "]" * depth)
    if kind == "keys":
        return {str(i): i for i in range(draw(st.sampled_from([10, 1_000])))}
    return " ".join(["a@b.co", "4111 1111 1111 1111", "10.0.0.1", "password: x1y2z3"] * draw(st.integers(1, 2_000)))


def _table_bytes(fmt: str, rows: list[dict]) -> bytes:
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    if fmt == "json":
        return json.dumps(rows, ensure_ascii=False).encode()
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["prompt", "completion"])
        writer.writerows([[_cell_text(r.get("prompt")), _cell_text(r.get("completion"))] for r in rows])
        return out.getvalue().encode()
    import pyarrow
    import pyarrow.parquet

    out = io.BytesIO()
    table = pyarrow.table({key: [_cell_text(r.get(key)) for r in rows] for key in ("prompt", "completion")})
    pyarrow.parquet.write_table(table, out)
    return out.getvalue()


def _cell_text(value) -> str | None:
    return value if isinstance(value, str) or value is None else json.dumps(value)


def _document_bytes(fmt: str, paragraphs: list[str]) -> bytes:
    if fmt in ("md", "txt"):
        return "\n\n".join(f"# {p}" if i % 3 == 0 else p for i, p in enumerate(paragraphs)).encode()
    if fmt == "html":
        body = "".join(f"<h2>{p}</h2>" if i % 3 == 0 else f"<div><span>{p}</span></div>" for i, p in enumerate(paragraphs))
        return f"<html><body><nav>menu</nav>{body}<table><tr><th>a</th><td>b</td></tr></table></body></html>".encode()
    if fmt == "docx":
        import docx

        document = docx.Document()
        for paragraph in paragraphs:
            document.add_paragraph(_xml_safe(paragraph))
        document.add_table(rows=1, cols=2).rows[0].cells[0].text = "cell"
        out = io.BytesIO()
        document.save(out)
        return out.getvalue()
    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(200, 200)
    writer.add_metadata({"/Title": _xml_safe(paragraphs[0])})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _xml_safe(text: str) -> str:
    return "".join(char for char in text if char in "\t\n\r" or (" " <= char and char not in "\ufffe\uffff")) or "x"


# --- mutations --------------------------------------------------------------------------------

_ENTITY_BOMB = (
    '<?xml version="1.0"?><!DOCTYPE w [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
    '<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;"><!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">]>'
)


@st.composite
def mutation(draw, fmt: str):
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "bom", "encoding", "line endings",
                                 "duplicate keys", "splice", "deep", "zip"]))
    position = draw(st.floats(0, 1))
    if kind == "flip":
        return kind, (position, draw(st.integers(1, 255)))
    if kind == "insert":
        return kind, (position, draw(st.binary(min_size=1, max_size=16)))
    if kind == "delete":
        return kind, (position, draw(st.integers(1, 64)))
    if kind == "bom":
        return kind, draw(st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf\xef\xbb\xbf"]))
    if kind == "encoding":
        return kind, draw(st.sampled_from(["utf-16", "utf-16-le", "latin-1", "cp1252", "utf-32"]))
    if kind == "line endings":
        return kind, draw(st.sampled_from([b"\r\n", b"\r", b"\n\n", b"\x85", "\u2028".encode()]))
    if kind == "deep":
        return kind, (position, draw(st.sampled_from([1_000, 100_000])))
    if kind == "splice":
        return kind, (position, draw(st.sampled_from(['"', "{", "[", "\\", "\x00", "\n", ",", '""', "]}", "\x1a"])))
    return kind, position


def apply(data: bytes, fmt: str, change) -> bytes:
    kind, argument = change
    at = lambda fraction: int(fraction * len(data))  # noqa: E731
    if kind == "truncate":
        return data[: at(argument)]
    if kind == "flip" and data:
        index = min(at(argument[0]), len(data) - 1)
        return data[:index] + bytes([data[index] ^ argument[1]]) + data[index + 1 :]
    if kind == "insert":
        return data[: at(argument[0])] + argument[1] + data[at(argument[0]) :]
    if kind == "delete":
        return data[: at(argument[0])] + data[at(argument[0]) + argument[1] :]
    if kind == "bom":
        return argument + data
    if kind == "encoding":
        try:
            return data.decode("utf-8").encode(argument, errors="replace")
        except UnicodeDecodeError:
            return data
    if kind == "line endings":
        return data.replace(b"\n", argument, max(1, data.count(b"\n") // 2))
    if kind == "duplicate keys":
        return data.replace(b'{"prompt": ', b'{"prompt": 1, "completion": null, "prompt": ', 3)
    if kind == "splice":
        return data[: at(argument[0])] + argument[1].encode() + data[at(argument[0]) :]
    if kind == "deep":  # a line, field or element nested past any parser's recursion limit
        depth = argument[1]
        return data[: at(argument[0])] + b"\n" + b"[" * depth + b"]" * depth + b"\n" + data[at(argument[0]) :]
    if kind == "zip" and fmt == "docx":
        return _mutate_docx_xml(data, argument)
    return data


def _mutate_docx_xml(data: bytes, position: float) -> bytes:
    """Keep the zip valid and break the XML inside: an entity bomb, deep nesting, or a cut."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as source:
            parts = {item.filename: source.read(item.filename) for item in source.infolist()}
    except Exception:  # noqa: BLE001 - an earlier mutation broke the zip (BadZipFile, ValueError, zlib.error, ...)
        return data
    xml = parts.get("word/document.xml", b"")
    choice = int(position * 3)
    if choice == 0:
        xml = _ENTITY_BOMB.encode() + b"<w>&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;</w>"
    elif choice == 1:
        xml = xml.replace(b"<w:body>", b"<w:body>" + b"<w:p>" * 5000, 1)
    else:
        xml = xml[: int(position * len(xml))]
    parts["word/document.xml"] = xml
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for name, content in parts.items():
            target.writestr(name, content)
    return out.getvalue()


@st.composite
def hostile_file(draw) -> tuple[str, bytes, list]:
    """(suffix, content, what was done to it)."""
    fmt = draw(st.sampled_from(TABLES + DOCUMENTS))
    rows = draw(st.lists(row, min_size=1, max_size=8))
    steps: list = []
    if draw(st.booleans()):
        index = draw(st.integers(0, len(rows) - 1))
        value = draw(hostile_value())
        rows[index] = {**rows[index], draw(st.sampled_from(["prompt", "completion", "extra"])): value}
        steps.append(("hostile value", type(value).__name__, len(value) if hasattr(value, "__len__") else value))
    if fmt in TABLES:
        data = _table_bytes(fmt, rows)
    else:
        data = _document_bytes(fmt, [_cell_text(r["prompt"]) or "x" for r in rows])
    for change in draw(st.lists(mutation(fmt), max_size=3)):
        data = apply(data, fmt, change)
        steps.append(change)
    return fmt, data, steps


# --- the invariants ---------------------------------------------------------------------------


class Hang(Exception):
    """A case ran longer than CASE_SECONDS."""


@contextmanager
def time_limit(seconds: int):
    def interrupt(signum, frame):
        raise Hang(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _words(row: dict) -> int:
    return sum(len(m["content"].split()) for m in row["messages"]) if "messages" in row else len(row["text"].split())


def check_case(folder: Path, files: list[tuple[str, bytes]]) -> str:
    """Write the files, prepare them, check the invariants; return 'ok' or 'user error'."""
    paths = []
    for number, (suffix, content) in enumerate(files):
        path = folder / f"case{number}.{suffix}"
        path.write_bytes(content)
        paths.append(path)
    out = folder / "out"
    console_text = io.StringIO()
    config = DataConfig(train=[str(path) for path in paths], max_tokens=4_000)
    try:
        with time_limit(CASE_SECONDS):
            card = prepare_dataset(config, out, seed=0, count_tokens=_words, console=Console(file=console_text, width=200))
    except DomaintuneError as error:
        assert error.exit_code == 2 and str(error).strip(), f"an unclear user error: {error!r}"
        _check_set_aside(out)
        return "user error"
    assert "Traceback" not in console_text.getvalue()
    totals = card["totals"]
    rejected, removed = _check_set_aside(out)
    kept = sum(len(_jsonl(out / f"{part}.jsonl")) for part in SPLITS)
    assert (len(rejected), len(removed), kept) == (totals["rejected"], totals["removed"], totals["kept"])
    assert totals["read"] + totals["augmented"] == totals["rejected"] + totals["removed"] + totals["kept"], totals
    read_files = {entry["file"]: entry for entry in card["files"]}
    skipped = {entry["file"] for entry in card.get("documents_skipped", [])}
    for path in paths:
        if path.suffix == ".jsonl":
            lines = [line for line in _text(path).split("\n") if line.rstrip("\r").strip()]
            assert read_files[str(path)]["rows"] == len(lines), "a JSONL line was neither a row nor rejected"
        elif path.suffix[1:] in DOCUMENTS:
            assert (str(path) in read_files) != (str(path) in skipped), f"{path.name} neither read nor skipped"
    return "ok"


def _check_set_aside(out: Path) -> tuple[list, list]:
    records = _jsonl(out / "rejected.jsonl"), _jsonl(out / "removed.jsonl")
    for record in records[0] + records[1]:
        assert record["file"] and isinstance(record["line"], int) and record["line"] >= 1 and record["reason"], record
    return records


def _jsonl(path: Path) -> list[dict]:
    # Newlines only: splitlines() would also cut at a U+2028 inside a value.
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line] if path.exists() else []


def _text(path: Path) -> str:
    data = path.read_bytes()
    return data[3:].decode() if data.startswith(b"\xef\xbb\xbf") else data.decode()


def run_case(files: list[tuple[str, bytes, list]]) -> str:
    # The report's charts see only counts and lengths; rasterising them would be most of the time.
    with tempfile.TemporaryDirectory(prefix="domaintune-fuzz-") as folder, mock.patch(
        "domaintune.data.data_report.png_data_uri", lambda figure: "data:image/png;base64,"
    ):
        return check_case(Path(folder), [(suffix, content) for suffix, content, _ in files])


def campaign(cases: int) -> tuple[Counter, list[str]]:
    """Run `cases` generated cases; return the outcome counts and a description of each failure.
    Failures are collected rather than raised: shrinking a case with a 100,000-deep line takes
    longer than the whole campaign, and the description is enough to reproduce it."""
    outcomes: Counter = Counter()
    failures: list[str] = []

    @settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(hostile_file(), min_size=1, max_size=2))
    def one(files):
        try:
            outcome = run_case(files)
        except Exception as error:  # noqa: BLE001 - any other exception is what the campaign looks for
            outcome = "FAILED"
            steps = [(suffix, len(content), steps) for suffix, content, steps in files]
            failures.append(f"{type(error).__name__}: {str(error)[:300]}\n    files: {str(steps)[:500]}\n"
                            + "".join(traceback.format_exception(error)[-3:]))
        outcomes[outcome] += 1
        for suffix, _, _ in files:
            outcomes[f"{suffix}: {outcome}"] += 1

    one()
    return outcomes, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000, help="How many generated cases to run.")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    outcomes, failures = campaign(args.cases)
    total = sum(count for key, count in outcomes.items() if ":" not in key)
    print(f"{total} cases in {time.perf_counter() - started:.0f} s: {outcomes['ok']} prepared (exit 0), "
          f"{outcomes['user error']} refused with a clear error (exit 2), {outcomes['FAILED']} broke an invariant")
    for key, count in sorted((key, count) for key, count in outcomes.items() if ":" in key):
        print(f"  {key:<24}{count:>7}")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
