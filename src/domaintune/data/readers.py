"""Read data files into raw rows that remember where they came from.

Every row carries its file and line so a rejected row can be found in the user's editor.
A broken row (not JSON, nested deeper than MAX_DEPTH, a CSV field longer than
MAX_CSV_FIELD, a CSV quote that never closes, ...) becomes a `RawRow` with `error` set and reading goes on; a broken file
(missing, not UTF-8, truncated JSON, empty, ...) raises `DomaintuneError` naming the file.
"""
from __future__ import annotations

import codecs
import csv
import glob
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from domaintune.core.errors import DomaintuneError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_WHITESPACE = re.compile(r"[ \t\n\r]*")
# Rows are a few levels deep (a row, its messages, a message); deeper ones are hostile or broken,
# and deep enough ones crash the JSON parser or writer with RecursionError.
MAX_DEPTH = 64
# The csv module's own default limit: a longer field is almost always an unclosed quote.
MAX_CSV_FIELD = 131_072
PREVIEW_CHARS = 200  # how much of a huge rejected value rejected.jsonl keeps


@dataclass(frozen=True)
class RawRow:
    file: str
    line: int  # physical line where the row starts (Parquet: row number, from 1)
    data: dict | None  # the row's columns, or None when the row could not be parsed
    error: str | None = None  # why the row could not be parsed
    raw: Any = None  # the unparsable text or value, kept for rejected.jsonl
    # JSON files only: the element's index in the array, from 0 (as `jq '.[N]'` names it), since
    # several elements can start on one line (a minified file is all line 1).
    item: int | None = None


def read_files(patterns: list[str]) -> list[tuple[Path, list[RawRow]]]:
    """Read every file the patterns name (globs allowed), each file once, in pattern order."""
    paths: list[Path] = []
    for pattern in patterns:
        for path in _expand(pattern):
            if path not in paths:
                paths.append(path)
    return [(path, list(read_rows(path))) for path in paths]


def _expand(pattern: str) -> list[Path]:
    if not any(char in pattern for char in "*?["):
        return [Path(pattern)]  # a plain name: read_rows reports it if it is missing
    matches = sorted(glob.glob(pattern, recursive=True))
    if not matches:
        raise DomaintuneError(f"{pattern}: no files match this pattern")
    return [Path(match) for match in matches]


def read_rows(path: Path) -> Iterator[RawRow]:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DomaintuneError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise DomaintuneError(f"{path}: file not found")
    if suffix == ".parquet":
        rows = _read_parquet(path)
    else:
        text = _read_text(path)
        rows = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv}[suffix](path, text)
    empty = True
    for row in rows:
        empty = False
        yield row
    if empty:
        raise DomaintuneError(f"{path}: file is empty (no rows)")


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]  # Excel and Notepad add it; it is not part of the content
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        byte = data[error.start]
        raise DomaintuneError(f"{path} line {line}: not UTF-8 text (byte 0x{byte:02x}); save the file as UTF-8") from None


def _read_jsonl(path: Path, text: str) -> Iterator[RawRow]:
    decoder = _Decoder()
    # split("\n") rather than splitlines(): splitlines also breaks on \u2028 and friends,
    # which may appear inside JSON strings and would throw the line numbers off.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            value, problem = decoder.document(line)
        except json.JSONDecodeError as error:
            yield RawRow(str(path), number, None, f"not valid JSON: {error.msg}", line)
            continue
        except RecursionError:
            yield RawRow(str(path), number, None, _TOO_DEEP, preview(line))
            continue
        if problem:
            yield RawRow(str(path), number, None, problem, preview(line))
        elif _too_deep(value):
            yield RawRow(str(path), number, None, _TOO_DEEP, preview(line))
        elif isinstance(value, dict):
            yield RawRow(str(path), number, value)
        else:
            yield RawRow(str(path), number, None, f"line is not a JSON object (got {json_type(value)})", value)


# An escape of a UTF-16 surrogate (\ud800-\udfff): only escapes can put one in a string read from UTF-8.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _Decoder(json.JSONDecoder):
    """json's decoder, checking what json.loads lets through: a key given twice (the last value silently
    wins), an integer too long for int() (a ValueError in mid-parse), and text with an unpaired surrogate
    (it breaks only later, when the row is written as UTF-8)."""

    def __init__(self) -> None:
        super().__init__(object_pairs_hook=self._object, parse_int=self._int)
        self.problems: list[str] = []
        # Keys given twice in the object decoded last: the outermost one once a document is decoded,
        # as the hook sees inner objects first.
        self.duplicates: list[str] = []

    def _object(self, pairs: list[tuple[str, Any]]) -> dict:
        value = dict(pairs)
        self.duplicates = []
        if len(value) < len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    self.duplicates.append(key)
                seen.add(key)
            self.problems.append(f"duplicate key {self.duplicates[0]!r} (only one of its values could be kept)")
        return value

    def _int(self, digits: str) -> int:
        limit = sys.get_int_max_str_digits()
        if limit and len(digits.lstrip("-")) > limit:
            self.problems.append(f"a number with {len(digits.lstrip('-')):,} digits, more than the {limit:,} "
                                 "Python can read")
            return 0
        return int(digits)

    def document(self, text: str) -> tuple[Any, str | None]:
        """The JSON document `text` (as json.loads reads it), and what is wrong with it (None: nothing)."""
        self.problems = []
        value = self.decode(text)
        return value, self._problem(value, text, 0, len(text))

    def value_at(self, text: str, pos: int) -> tuple[Any, int, str | None]:
        """The JSON value starting at offset `pos`, its end offset, and what is wrong with it (None: nothing)."""
        self.problems = []
        value, end = self.raw_decode(text, pos)
        return value, end, self._problem(value, text, pos, end)

    def _problem(self, value: Any, text: str, start: int, end: int) -> str | None:
        if not self.problems and _SURROGATE_ESCAPE.search(text, start, end):
            surrogate = _unpaired_surrogate(value)
            if surrogate:
                return f"text with an unpaired surrogate (\\u{ord(surrogate):04x}), which is not valid Unicode"
        return self.problems[0] if self.problems else None


def _unpaired_surrogate(value: Any) -> str | None:
    """The first unpaired surrogate in the strings (keys included) of `value`, or None."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending += item.keys()
            pending += item.values()
        elif isinstance(item, list):
            pending += item
        elif isinstance(item, str) and not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as error:
                return item[error.start]
    return None


_TOO_DEEP = f"nested too deeply (more than {MAX_DEPTH} levels of lists and objects)"


def _too_deep(value: Any) -> bool:
    """Whether lists and objects nest more than MAX_DEPTH levels (checked without recursion)."""
    level = [value]
    for _ in range(MAX_DEPTH):
        level = [child for item in level if isinstance(item, (list, dict))
                 for child in (item.values() if isinstance(item, dict) else item)]
        if not level:
            return False
    return any(isinstance(item, (list, dict)) for item in level)


def preview(text: str) -> str:
    """The start of a huge value, for rejected.jsonl: enough to find it, not another copy of it."""
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + f"... ({len(text):,} characters)"


def _read_json(path: Path, text: str) -> Iterator[RawRow]:
    if not text.strip():
        return  # read_rows reports the empty file
    decoder = _Decoder()
    try:
        document, _ = decoder.document(text)  # what is wrong inside an element rejects just that element, below
    except json.JSONDecodeError as error:
        ends_early = not text[error.pos:].strip()
        detail = "the file ends too early; is it truncated?" if ends_early else error.msg
        raise DomaintuneError(f"{path} line {error.lineno} column {error.colno}: not valid JSON ({detail})") from None
    except RecursionError:
        raise DomaintuneError(f"{path}: {_TOO_DEEP}") from None
    # The document validated; walk it again with raw_decode to learn where each element starts,
    # which json.loads does not tell.
    start = _skip_whitespace(text, 0)
    if isinstance(document, dict):
        if decoder.duplicates:
            raise DomaintuneError(f"{path}: key {decoder.duplicates[0]!r} appears twice in the top-level object "
                                  "(only one of its values could be kept); remove one")
        lists = [key for key, value in document.items() if isinstance(value, list)]
        if len(lists) != 1:
            raise DomaintuneError(
                f"{path}: expected a JSON array of rows, or an object holding exactly one list of rows "
                f"(found {len(lists)} lists)"
            )
        start = _member_offset(decoder, text, start, lists[0])
    elif not isinstance(document, list):
        raise DomaintuneError(f"{path}: expected a JSON array of rows, got {json_type(document)}")
    line, counted_to = 1, 0
    for item, (offset, end, value, problem) in enumerate(_array_items(decoder, text, start)):
        line += text.count("\n", counted_to, offset)
        counted_to = offset
        if problem:
            yield RawRow(str(path), line, None, problem, preview(text[offset:end]), item)
        elif _too_deep(value):
            yield RawRow(str(path), line, None, _TOO_DEEP, preview(text[offset:end]), item)
        elif isinstance(value, dict):
            yield RawRow(str(path), line, value, item=item)
        else:
            yield RawRow(str(path), line, None, f"element is not a JSON object (got {json_type(value)})", value, item)


def _skip_whitespace(text: str, pos: int) -> int:
    return _WHITESPACE.match(text, pos).end()


def _array_items(decoder: _Decoder, text: str, pos: int) -> Iterator[tuple[int, int, Any, str | None]]:
    """Yield (start offset, end offset, value, what is wrong with it) for each element of the valid JSON
    array starting at `pos`."""
    pos = _skip_whitespace(text, pos + 1)
    while text[pos] != "]":
        value, end, problem = decoder.value_at(text, pos)
        yield pos, end, value, problem
        pos = _skip_whitespace(text, end)
        if text[pos] == ",":
            pos = _skip_whitespace(text, pos + 1)


def _member_offset(decoder: _Decoder, text: str, pos: int, wanted: str) -> int:
    """Offset of the value of key `wanted` in the valid JSON object starting at `pos`."""
    pos = _skip_whitespace(text, pos + 1)
    while True:
        key, pos = decoder.raw_decode(text, pos)
        pos = _skip_whitespace(text, _skip_whitespace(text, pos) + 1)  # past the colon
        if key == wanted:
            return pos
        _, pos = decoder.raw_decode(text, pos)
        pos = _skip_whitespace(text, _skip_whitespace(text, pos) + 1)  # past the comma


def _read_csv(path: Path, text: str) -> Iterator[RawRow]:
    # The csv module fails the whole file on a field over its limit; lift the limit while reading
    # and reject just the row with the long field.
    limit = csv.field_size_limit(sys.maxsize)
    try:
        records = _csv_records(text)
        _, header, broken = next(records, (1, None, None))
        if broken:
            raise DomaintuneError(f"{path} line 1: the header is not valid CSV: {broken}")
        if header is None:
            return
        header = [name.strip() for name in header]
        for index, name in enumerate(header):
            if name in header[:index]:
                # dict(zip()) would keep the last column of the name and silently drop the other.
                raise DomaintuneError(f"{path} line 1: column {name!r} appears twice in the header (columns "
                                      f"{header.index(name) + 1} and {index + 1}); rename or remove one")
        for start, fields, broken in records:
            if broken:
                yield RawRow(str(path), start, None, broken, preview(fields))
                continue
            if not fields:
                continue  # blank line
            longest = max(range(len(fields)), key=lambda index: len(fields[index]))
            if len(fields[longest]) > MAX_CSV_FIELD:
                name = header[longest] if longest < len(header) else f"number {longest + 1}"
                error = (f"field {name!r} has {len(fields[longest]):,} characters, more than {MAX_CSV_FIELD:,} "
                         "(an unclosed quote?)")
                yield RawRow(str(path), start, None, error, [preview(field) for field in fields])
            elif len(fields) != len(header):
                error = f"row has {len(fields)} fields, the header has {len(header)}"
                yield RawRow(str(path), start, None, error, fields)
            else:
                yield RawRow(str(path), start, dict(zip(header, fields)))
    finally:
        csv.field_size_limit(limit)


def _csv_records(text: str) -> Iterator[tuple[int, Any, str | None]]:
    """(line the record starts on, its fields, None), or (that line, the line's text, why it is broken).

    The csv module's lenient mode lets a quote that never closes swallow the rest of the file into one
    field, silently. Read strictly instead, and where a record breaks, set aside only the line it
    started on and read on from the next line: the lines it swallowed are rows of their own.
    """
    # newline="" keeps the line endings, so quoted fields may span lines as the csv module expects.
    lines = io.StringIO(text, newline="").readlines()
    position = 0  # index of the first line the current reader reads
    while position < len(lines):
        reader = csv.reader((lines[index] for index in range(position, len(lines))), strict=True)
        start = position + 1
        try:
            for fields in reader:
                yield start, fields, None
                start = position + reader.line_num + 1
            return
        except csv.Error as error:
            end = position + reader.line_num  # the line where the record broke
            yield start, lines[start - 1].rstrip("\r\n"), _csv_break(start, end, str(error))
            position = start


def _csv_break(start: int, end: int, error: str) -> str:
    """Why the CSV record starting on line `start` broke on line `end` (`error`: the csv module's words)."""
    read_on = "; the lines after it are read as rows of their own" if start > 1 else ""
    if "expected after" not in error:  # "unexpected end of data": the quote is still open at the end
        return f"unclosed quote starting at line {start} (it runs to the end of the file){read_on}"
    if end > start:
        return f"unclosed quote starting at line {start} (a quote on line {end} closes it, followed by text){read_on}"
    return ('text after the closing quote of a quoted field; quote the whole field and double the quotes '
            'inside it ("say ""hi"" twice")')


def _read_parquet(path: Path) -> Iterator[RawRow]:
    import pyarrow
    import pyarrow.parquet

    try:
        parquet = pyarrow.parquet.ParquetFile(path)
        number = 0
        for batch in parquet.iter_batches():
            for data in batch.to_pylist():
                number += 1
                yield RawRow(str(path), number, data)
    except (pyarrow.ArrowException, OSError) as error:
        raise DomaintuneError(f"{path}: cannot read Parquet file ({error})") from None


def json_type(value: Any) -> str:
    """A value's type in the words of JSON, for messages about rows."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
