import json
from pathlib import Path

import pandas as pd
import pytest

from domaintune.core.errors import DomaintuneError
from domaintune.data.readers import read_files, read_rows


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_reports_physical_lines_and_keeps_going_after_a_bad_line(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a"}\n\n{"text": broken\n["not", "an object"]\n{"text": "b"}\n')
    rows = list(read_rows(path))
    assert [(row.line, row.data) for row in rows] == [
        (1, {"text": "a"}),
        (3, None),
        (4, None),
        (5, {"text": "b"}),
    ]
    assert rows[1].error.startswith("not valid JSON") and rows[1].raw == '{"text": broken'
    assert rows[2].error == "line is not a JSON object (got list)"
    assert rows[0].file == str(path)


def test_jsonl_line_numbers_ignore_unicode_line_separators_inside_strings(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a\u2028b"}\n{"text": "c"}\n')
    assert [row.line for row in read_rows(path)] == [1, 2]


def test_json_array_elements_carry_their_own_line(tmp_path):
    elements = ['{"text": "one"}', '{\n    "text": "two",\n    "label": "x"\n  }', '"not an object"', '{"text": "four"}']
    path = write(tmp_path / "d.json", "[\n  " + ",\n  ".join(elements[:2]) + ",\n\n  " + ",\n  ".join(elements[2:]) + "\n]\n")
    rows = list(read_rows(path))
    assert [row.line for row in rows] == [2, 3, 8, 9]
    assert rows[1].data == {"text": "two", "label": "x"}
    assert rows[2].data is None and rows[2].error == "element is not a JSON object (got text)"


def test_json_object_holding_one_list(tmp_path):
    path = write(tmp_path / "d.json", '{"version": 2,\n "data": [\n  {"text": "a"},\n  {"text": "b"}\n ]\n}')
    assert [(row.line, row.data["text"]) for row in read_rows(path)] == [(3, "a"), (4, "b")]


def test_json_needs_an_array_of_rows(tmp_path):
    path = write(tmp_path / "d.json", '{"a": [1], "b": [2]}')
    with pytest.raises(DomaintuneError, match="exactly one list"):
        list(read_rows(path))


def test_csv_rows_start_at_line_two_and_multiline_fields_report_their_first_line(tmp_path):
    path = write(tmp_path / "d.csv", 'text,label\nfirst,a\n"spans\ntwo lines",b\nthree,fields,here\n\nlast,c\n')
    rows = list(read_rows(path))
    assert [(row.line, row.data) for row in rows] == [
        (2, {"text": "first", "label": "a"}),
        (3, {"text": "spans\ntwo lines", "label": "b"}),
        (5, None),
        (7, {"text": "last", "label": "c"}),
    ]
    assert rows[2].error == "row has 3 fields, the header has 2"


def test_parquet_rows_are_numbered_from_one(tmp_path):
    path = tmp_path / "d.parquet"
    pd.DataFrame({"prompt": ["p1", "p2"], "completion": ["c1", None]}).to_parquet(path)
    rows = list(read_rows(path))
    assert [(row.line, row.data) for row in rows] == [
        (1, {"prompt": "p1", "completion": "c1"}),
        (2, {"prompt": "p2", "completion": None}),
    ]


def test_utf8_bom_is_not_part_of_the_first_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbftext\nhello\n")
    assert list(read_rows(path))[0].data == {"text": "hello"}


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("latin1.jsonl", b'{"text": "a"}\n{"text": "caf\xe9"}\n', r"latin1\.jsonl line 2: not UTF-8"),
        ("cut.json", b'[\n  {"text": "a"},\n  {"text": "b"', r"cut\.json line 3 column 15: not valid JSON \(.*truncated"),
        ("broken.json", b'[\n  {"text": "a"} {"text": "b"}]', r"broken\.json line 2 column 17: not valid JSON"),
        ("empty.jsonl", b"\n  \n", r"empty\.jsonl: file is empty"),
        ("empty.json", b"[]", r"empty\.json: file is empty"),
        ("header_only.csv", b"text,label\n", r"header_only\.csv: file is empty"),
        ("junk.parquet", b"not parquet", r"junk\.parquet: cannot read Parquet"),
        ("notes.txt", b"hello", r"notes\.txt: unsupported file type '\.txt'"),
    ],
)
def test_whole_file_problems_name_the_file_and_line(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DomaintuneError, match=expected):
        list(read_rows(path))


def test_missing_file(tmp_path):
    with pytest.raises(DomaintuneError, match=r"nothere\.jsonl: file not found"):
        read_files([str(tmp_path / "nothere.jsonl")])


def test_read_files_expands_globs_once_per_file_and_rejects_empty_patterns(tmp_path):
    for name in ("b.jsonl", "a.jsonl"):
        write(tmp_path / name, json.dumps({"text": name}) + "\n")
    files = read_files([str(tmp_path / "*.jsonl"), str(tmp_path / "a.jsonl")])
    assert [path.name for path, _ in files] == ["a.jsonl", "b.jsonl"]
    assert files[1][1][0].data == {"text": "b.jsonl"}
    with pytest.raises(DomaintuneError, match=r"\*\.csv: no files match"):
        read_files([str(tmp_path / "*.csv")])


def test_a_jsonl_line_nested_too_deep_is_a_rejected_row(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    path = write(tmp_path / "d.jsonl", '{"text": "a"}\n{"text": ' + deep + '}\n{"text": "b"}\n')
    rows = list(read_rows(path))
    assert [(row.line, row.data) for row in rows] == [(1, {"text": "a"}), (2, None), (3, {"text": "b"})]
    assert rows[1].error.startswith("nested too deeply")
    moderately_deep = '{"text": "c", "extra": ' + "[" * 500 + "]" * 500 + "}"
    row = next(read_rows(write(tmp_path / "e.jsonl", moderately_deep + "\n")))
    assert row.data is None and row.error.startswith("nested too deeply")


def test_a_json_file_nested_too_deep_names_the_file(tmp_path):
    path = write(tmp_path / "d.json", "[" + "[" * 100_000 + "]" * 100_000 + "]")
    with pytest.raises(DomaintuneError, match=r"d\.json: .*nested too deeply"):
        list(read_rows(path))


def test_one_huge_csv_field_rejects_only_its_row(tmp_path):
    path = write(tmp_path / "d.csv", f'text,label\nfirst,a\n"{"x" * 200_000}",b\nlast,c\n')
    rows = list(read_rows(path))
    assert [(row.line, row.data) for row in rows] == [
        (2, {"text": "first", "label": "a"}),
        (3, None),
        (4, {"text": "last", "label": "c"}),
    ]
    assert rows[1].error == "field 'text' has 200,000 characters, more than 131,072 (an unclosed quote?)"
    assert len(rows[1].raw[0]) < 1000  # rejected.jsonl gets a preview, not another copy of the field


def test_rows_of_a_one_line_json_array_carry_their_index(tmp_path):
    path = write(tmp_path / "d.json", json.dumps([{"text": "a"}, {"text": "b"}, 3]))
    rows = list(read_rows(path))
    assert [(row.line, row.item) for row in rows] == [(1, 0), (1, 1), (1, 2)]
    jsonl = list(read_rows(write(tmp_path / "d.jsonl", '{"text": "a"}\n')))
    assert jsonl[0].item is None  # a JSONL line is its own address


def test_an_unclosed_csv_quote_rejects_its_line_and_the_rows_after_it_are_read(tmp_path):
    lines = ["prompt,completion", 'What is 1+1?,"2', "Capital of France?,Paris", "Capital of Spain?,Madrid",
             "Capital of Italy?,Rome", "Largest ocean?,Pacific"]
    rows = list(read_rows(write(tmp_path / "d.csv", "\n".join(lines) + "\n")))
    assert [(row.line, row.data and row.data["completion"]) for row in rows] == [
        (2, None), (3, "Paris"), (4, "Madrid"), (5, "Rome"), (6, "Pacific")]
    assert rows[0].error.startswith("unclosed quote starting at line 2 ")
    assert rows[0].raw == 'What is 1+1?,"2'


def test_a_csv_quote_closed_lines_later_by_another_fields_quote_rejects_only_its_line(tmp_path):
    text = 'prompt,completion\nq1,"2\nq2,Paris\nq3,"Rome, Italy"\nq4,"multi\nline"\n'
    rows = list(read_rows(write(tmp_path / "d.csv", text)))
    assert [(row.line, row.data) for row in rows] == [
        (2, None),
        (3, {"prompt": "q2", "completion": "Paris"}),
        (4, {"prompt": "q3", "completion": "Rome, Italy"}),
        (5, {"prompt": "q4", "completion": "multi\nline"}),
    ]
    assert rows[0].error.startswith("unclosed quote starting at line 2 ")


def test_text_after_a_closing_csv_quote_rejects_the_row(tmp_path):
    rows = list(read_rows(write(tmp_path / "d.csv", 'text,label\n"good" movie,pos\nfine,neg\n')))
    assert [(row.line, row.data) for row in rows] == [(2, None), (3, {"text": "fine", "label": "neg"})]
    assert "after the closing quote" in rows[0].error


def test_quoted_multiline_csv_fields_with_crlf_and_doubled_quotes_still_read(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'prompt,completion\r\n"multi\r\nline, with ""quotes""",a2\r\nq3,a3\r\n')
    assert [(row.line, row.data) for row in read_rows(path)] == [
        (2, {"prompt": 'multi\r\nline, with "quotes"', "completion": "a2"}),
        (4, {"prompt": "q3", "completion": "a3"}),
    ]


def test_an_unclosed_quote_in_the_csv_header_names_the_file(tmp_path):
    with pytest.raises(DomaintuneError, match=r"d\.csv line 1: .*unclosed quote"):
        list(read_rows(write(tmp_path / "d.csv", '"prompt,completion\nq,a\n')))


def test_a_csv_header_naming_a_column_twice_names_it(tmp_path):
    path = write(tmp_path / "d.csv", "prompt,completion, completion\nq,4,\n")
    with pytest.raises(DomaintuneError, match=r"d\.csv line 1: column 'completion' appears twice in the header"):
        list(read_rows(path))


def test_a_jsonl_row_with_a_duplicate_key_is_rejected_naming_the_key(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"prompt": "2+2?", "completion": "4", "completion": "5"}\n'
                 '{"messages": [{"role": "user", "content": "a", "content": "b"}]}\n{"prompt": "p", "completion": "c"}\n')
    rows = list(read_rows(path))
    assert [(row.line, row.data) for row in rows] == [(1, None), (2, None), (3, {"prompt": "p", "completion": "c"})]
    assert rows[0].error.startswith("duplicate key 'completion'") and rows[1].error.startswith("duplicate key 'content'")
    assert rows[0].raw == '{"prompt": "2+2?", "completion": "4", "completion": "5"}'


def test_a_jsonl_row_with_an_unpaired_surrogate_is_rejected_at_read_time(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"prompt": "a \\ud800 b", "completion": "x"}\n'
                 '{"prompt": "smile \\ud83d\\ude00", "completion": "y"}\n{"\\udfff": 1}\n')
    rows = list(read_rows(path))
    assert [(row.line, row.data) for row in rows] == [(1, None), (2, {"prompt": "smile \U0001f600", "completion": "y"}),
                                                       (3, None)]
    assert rows[0].error.startswith("text with an unpaired surrogate (\\ud800)")
    assert rows[2].error.startswith("text with an unpaired surrogate (\\udfff)")


def test_a_jsonl_row_with_an_integer_too_long_to_read_is_rejected(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": ' + "1" * 5000 + '}\n{"text": "b", "label": -12}\n')
    rows = list(read_rows(path))
    assert [(row.line, row.data) for row in rows] == [(1, None), (2, {"text": "b", "label": -12})]
    assert rows[0].error.startswith("a number with 5,000 digits")
    assert len(rows[0].raw) < 1000


def test_json_array_elements_with_a_long_integer_duplicate_key_or_surrogate_are_rejected_alone(tmp_path):
    path = write(tmp_path / "d.json", '[{"text": "a", "label": ' + "1" * 5000 + '},\n {"text": "b", "text": "c"},\n'
                 ' {"text": "\\ud800"},\n {"text": "d", "label": "x"}]')
    rows = list(read_rows(path))
    assert [(row.line, row.item, row.data) for row in rows] == [
        (1, 0, None), (2, 1, None), (3, 2, None), (4, 3, {"text": "d", "label": "x"})]
    assert rows[0].error.startswith("a number with 5,000 digits")
    assert rows[1].error.startswith("duplicate key 'text'")
    assert rows[2].error.startswith("text with an unpaired surrogate (\\ud800)")


def test_a_json_object_naming_its_list_of_rows_twice_is_a_clear_error(tmp_path):
    path = write(tmp_path / "d.json", '{"rows": 5, "rows": [{"prompt": "p", "completion": "c"}]}')
    with pytest.raises(DomaintuneError, match=r"d\.json: key 'rows' appears twice in the top-level object"):
        list(read_rows(path))
