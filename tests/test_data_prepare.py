import io
import json
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from domaintune.config import DataConfig, SplitConfig
from domaintune.core.errors import DomaintuneError
from domaintune.data.cleaning import count_conflicts, dedup_rows, filter_row, normalise_row, normalise_text
from domaintune.data.prepare import prepare_dataset
from domaintune.data.split import check_leakage, sample_rows, split_rows


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def qa(prompt: str, answer: str, label: str | None = None, line: int = 1) -> dict:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "label": label, "source": {"file": "f.jsonl", "line": line}}


def prepare(tmp_path: Path, console_out: io.StringIO | None = None, **config) -> dict:
    console = Console(file=console_out or io.StringIO(), width=200)
    return prepare_dataset(DataConfig(**config), tmp_path / "out", seed=0, console=console)


# --- cleaning --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("  hello \t  world  ", "hello world"),
        ("a\r\nb\rc", "a\nb\nc"),
        ("one\n\n\n\n two  \n", "one\n\n two"),
        # Indentation is kept (code, YAML, nested lists), less what every line shares.
        ("    def f(x):\n        if x:\n            return 1", "def f(x):\n    if x:\n        return 1"),
        ("a:\n  b:  1\n  c: [1,  2]", "a:\n  b: 1\n  c: [1, 2]"),
        ("keep\nsingle\n\nand double", "keep\nsingle\n\nand double"),
        ("cafe\u0301\u00a0bar", "caf\u00e9 bar"),  # combining accent composed (NFC), NBSP is a space
    ],
)
def test_normalise_text(raw, clean):
    assert normalise_text(raw) == clean


def test_normalise_row_touches_every_text_field():
    row = normalise_row(qa(" Cafe\u0301 ", " yes  ", label=" yes "))
    assert row["messages"][0]["content"] == "Caf\u00e9"
    assert row["messages"][1]["content"] == "yes" and row["label"] == "yes"
    assert normalise_row({"text": "a  b\n\n\n"})["text"] == "a b"


def test_filters_give_reasons():
    def tokens(row):
        return 1400

    assert filter_row(qa("q", ""), 1, 1024, None).reason == "empty"
    assert filter_row(qa("", "a"), 1, 1024, None).reason == "empty user message"
    assert filter_row(qa("q", "ab"), 5, 1024, None).reason == "too short: 2 chars < 5"
    assert filter_row(qa("q", "answer"), 1, 1024, tokens).reason == "too long: 1400 tokens > 1024"
    assert filter_row(qa("q", "answer"), 1, 2048, tokens) is None


def test_dedup_keeps_the_first_and_counts_conflicts():
    rows = [qa("q", "a", line=1), qa("q", "a", line=2), qa("q", "b", line=3), qa("r", "a", line=4)]
    kept, removed = dedup_rows(rows)
    assert [row["source"]["line"] for row in kept] == [1, 3, 4]
    assert [(item.row["source"]["line"], item.reason) for item in removed] == [(2, "duplicate of f.jsonl:1")]
    assert count_conflicts(kept) == 1  # "q" is answered "a" and "b"


# --- split -----------------------------------------------------------------------------


def labelled_rows(n: int = 100) -> list[dict]:
    return [qa(f"question {i}", "pos" if i < 60 else "neg", label="pos" if i < 60 else "neg", line=i) for i in range(n)]


def test_stratified_split_keeps_label_proportions_and_depends_only_on_the_seed():
    config = SplitConfig(validation=0.1, test=0.2)
    train, validation, test = split_rows(labelled_rows(), config, seed=1)
    assert Counter(row["label"] for row in train) == {"pos": 42, "neg": 28}
    assert Counter(row["label"] for row in validation) == {"pos": 6, "neg": 4}
    assert Counter(row["label"] for row in test) == {"pos": 12, "neg": 8}
    assert split_rows(labelled_rows(), config, seed=1) == (train, validation, test)
    assert split_rows(labelled_rows(), config, seed=2)[2] != test


def test_closed_answers_without_a_label_column_are_stratified_by_answer():
    # A yes/no set written as prompt/completion (no label column): 10% "Yes".
    rows = [qa(f"Same product {i}?", "Yes." if i % 10 == 0 else "no", line=i) for i in range(200)]
    for seed in range(3):
        _, _, test = split_rows(rows, SplitConfig(validation=0.1, test=0.2), seed)
        assert Counter(row["messages"][-1]["content"].strip(".").lower() for row in test) == {"no": 36, "yes": 4}
    free = [qa(f"question {i}", f"answer {i}", line=i) for i in range(200)]  # free text: nothing to stratify by
    assert len(split_rows(free, SplitConfig(validation=0.1, test=0.2), 0)[2]) == 40


def test_many_small_strata_keep_the_holdouts_at_their_share():
    # 10 answers x 6 rows: rounding each stratum's 0.6 up would hold out 10 rows, not 10% of 60.
    rows = [qa(f"Where is office {i}?", f"City{i % 10}", line=i) for i in range(60)]
    train, validation, test = split_rows(rows, SplitConfig(validation=0.1, test=0.1), seed=0)
    assert (len(train), len(validation), len(test)) == (48, 6, 6)
    assert len({row["messages"][-1]["content"] for row in test}) == 6  # one row each from six of the answers


def test_a_capped_test_split_cuts_the_most_common_answer_first_and_keeps_the_order():
    # Rare answers last in the file: the first 60 of 67 rows would drop 7 of the 10 rare ones.
    rows = [qa(f"Event {i}?", "Information" if i < 57 else ("Error" if i % 2 else "Warning"), line=i) for i in range(67)]
    kept = sample_rows(rows, 60)
    answers = Counter(row["messages"][-1]["content"] for row in kept)
    assert answers == {"Information": 50, "Error": 5, "Warning": 5}
    assert Counter(row["messages"][-1]["content"] for row in sample_rows(rows, 12)) == {
        "Information": 4, "Error": 4, "Warning": 4}  # an equal share each when every answer has more
    assert len(sample_rows(rows, 13)) == 13
    assert [row["source"]["line"] for row in kept] == sorted(row["source"]["line"] for row in kept)
    assert sample_rows(rows, 100) is rows
    free = [qa(f"question {i}", f"answer {i}", line=i) for i in range(20)]
    assert sample_rows(free, 5) == free[:5]  # free text: nothing to keep a share of


def test_answers_that_rarely_repeat_are_not_a_label_set():
    from domaintune.core.answers import answer_counts

    assert answer_counts([qa(f"q{i}", f"City{i}", line=i) for i in range(15)]) is None  # 15 answers, 15 rows
    assert answer_counts([qa(f"q{i}", "A long free text answer here" if i % 2 else "no", line=i) for i in range(8)]) is None
    assert answer_counts([qa(f"q{i}", "Yes." if i % 3 else "no", line=i) for i in range(9)]) == {"yes": 6, "no": 3}


def test_grouped_split_never_puts_one_prompt_in_two_splits():
    rows = [qa(f"prompt {i % 15}", f"answer {i}", line=i) for i in range(60)]  # 15 prompts, 4 answers each
    for seed in range(5):
        splits = split_rows(rows, SplitConfig(validation=0.2, test=0.2), seed)
        prompts = [{row["messages"][0]["content"] for row in split} for split in splits]
        assert not (prompts[0] & prompts[1] or prompts[0] & prompts[2] or prompts[1] & prompts[2])
        assert sum(map(len, splits)) == 60 and all(splits)
        assert check_leakage(splits[0], splits[1] + splits[2]) == []


def test_check_leakage_finds_eval_rows_asking_a_train_question():
    train = [qa("What is APR?", "A yearly rate.")]
    test = [qa(" What is  APR? ", "Annual percentage rate."), qa("What is a loan?", "Borrowed money.")]
    assert check_leakage(train, test) == [test[0]]


# --- prepare ---------------------------------------------------------------------------


def test_rejected_rows_point_at_their_file_and_line(tmp_path):
    pairs = [{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}]
    jsonl = write_jsonl(tmp_path / "a.jsonl", pairs + ["{oops", {"prompt": "p4"}])
    csv = tmp_path / "b.csv"
    csv.write_text('prompt,completion\np5,c5\n"p6\nstill p6",c6\np7,c7,extra\n', encoding="utf-8")
    array = tmp_path / "c.json"
    elements = '{"prompt": "p8", "completion": "c8"},\n{"prompt": "p9", "completion": "c9"},\n\n\n\n{"prompt": "p10", "completion": 10}'
    array.write_text("[\n" + elements + "\n]", encoding="utf-8")  # the bad element is on line 7
    card = prepare(tmp_path, train=[jsonl, str(csv), str(array)])
    rejected = read_jsonl(tmp_path / "out" / "rejected.jsonl")
    assert [(Path(r["file"]).name, r["line"], r["reason"]) for r in rejected] == [
        ("a.jsonl", 3, "not valid JSON: Expecting property name enclosed in double quotes"),
        ("a.jsonl", 4, "missing column 'completion'"),
        ("b.csv", 5, "row has 3 fields, the header has 2"),
        ("c.json", 7, "column 'completion': expected text, got number"),
    ]
    assert rejected[0]["row"] == "{oops" and rejected[1]["row"] == {"prompt": "p4"}
    kept = [row for part in card["splits"] for row in read_jsonl(tmp_path / "out" / f"{part}.jsonl")]
    multiline = next(row for row in kept if row["messages"][0]["content"] == "p6\nstill p6")
    assert multiline["source"] == {"file": str(csv), "line": 3}
    assert card["files"][0] == {"file": jsonl, "part": "train", "format": "prompt_completion", "rows": 4, "rejected": 2}
    assert [(file["format"], file["rows"], file["rejected"]) for file in card["files"][1:]] == [
        ("prompt_completion", 3, 1),
        ("prompt_completion", 3, 1),
    ]
    assert card["rejected_reasons"]["missing column 'completion'"] == 1


def test_dedup_filters_and_card_counts_add_up(tmp_path):
    rows = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(20)]
    rows += [
        {"instruction": "Question  3?", "output": "Answer 3. "},  # line 21: duplicate of line 4 after normalisation
        {"instruction": "Question 3?", "output": "Another answer."},  # line 22: conflicting answer, kept
        {"instruction": "Say nothing", "output": "   "},  # line 23: empty
        {"instruction": "Short", "output": "ok"},  # line 24: too short
        {"instruction": "Broken"},  # line 25: rejected
    ]
    path = write_jsonl(tmp_path / "qa.jsonl", rows)
    out = io.StringIO()
    card = prepare(tmp_path, console_out=out, train=[path], min_chars=3)
    removed = read_jsonl(tmp_path / "out" / "removed.jsonl")
    assert sorted((r["line"], r["reason"]) for r in removed) == [
        (21, f"duplicate of {path}:4"),
        (23, "empty"),
        (24, "too short: 2 chars < 3"),
    ]
    assert removed[0]["row"]["messages"][0]["content"]
    totals = card["totals"]
    assert totals["read"] == 25 and totals["rejected"] == 1 and totals["removed"] == 3
    assert totals["removed_by_reason"] == {"duplicate": 1, "empty": 1, "too short": 1}
    assert totals["duplicates"] == 1 and totals["conflicting_duplicates"] == 1 and totals["leaked"] == 0
    assert totals["read"] == totals["rejected"] + totals["removed"] + totals["kept"] == 1 + 3 + 21
    assert sum(card["splits"].values()) == totals["kept"]
    for part, size in card["splits"].items():
        assert len(read_jsonl(tmp_path / "out" / f"{part}.jsonl")) == size
    assert json.loads((tmp_path / "out" / "data_card.json").read_text()) == card
    assert f"1 rows rejected, see {tmp_path / 'out' / 'rejected.jsonl'}" in out.getvalue()


def test_dedup_off_keeps_duplicates_but_counts_them(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "same"}, {"text": "same"}, {"text": "other"}])
    card = prepare(tmp_path, train=[path], dedup=False, split={"validation": 0.0, "test": 0.0})
    assert card["totals"]["duplicates"] == 1 and card["splits"]["train"] == 3


def test_token_filter_and_statistics(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "word " * n} for n in range(1, 41)])
    calls = []

    def count_tokens(row):
        calls.append(row["source"]["line"])
        return len(row["text"].split())

    card = prepare_dataset(
        # "word word ..." rows are repetitive and near-duplicates of each other: only the length filter is under test.
        DataConfig(train=[path], max_tokens=30, split={"validation": 0.0, "test": 0.0},
                   near_dedup={"enabled": False}, quality={"enabled": False}),
        tmp_path / "out", seed=0, count_tokens=count_tokens, console=Console(file=io.StringIO()),
    )
    assert card["totals"]["removed_by_reason"] == {"too long": 10}
    assert card["lengths"]["train"]["tokens"] == {"min": 1, "mean": 15.5, "p50": 15, "p95": 29, "max": 30}
    assert card["lengths"]["train"]["chars"]["max"] == len("word " * 30) - 1
    assert sorted(calls) == list(range(1, 41))  # each row tokenised once
    assert "tokens" not in prepare(tmp_path, train=[path], near_dedup={"enabled": False}, quality={"enabled": False})["lengths"]["train"]


def test_a_held_out_conversation_that_a_train_row_continues_is_removed(tmp_path):
    """A file holding each conversation also cut after each turn: [u1, a1] in test, [u1, a1, u2, a2] in train."""
    def chat(*turns: str) -> dict:
        return {"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(turns)]}

    train = write_jsonl(tmp_path / "train.jsonl", [chat(f"question {i}", f"answer {i}", f"and then {i}?", f"then {i}")
                                                   for i in range(10)])
    test = write_jsonl(tmp_path / "test.jsonl", [chat("question 3", "answer 3"), chat("question 3", "another answer"),
                                                 chat("new question", "new answer")])
    card = prepare(tmp_path, train=[train], test=[test], split={"validation": 0.0, "test": 0.0},
                   near_dedup={"enabled": False}, quality={"enabled": False})
    assert card["splits"]["test"] == 2 and card["totals"]["leaked"] == 1
    [removed] = read_jsonl(tmp_path / "out" / "removed.jsonl")
    assert removed["line"] == 1 and "continues this conversation" in removed["reason"]


def test_labels_are_stratified_and_reported(tmp_path):
    rows = [{"text": f"review {i}", "label": "pos" if i < 60 else "neg"} for i in range(100)]
    card = prepare(tmp_path, train=[write_jsonl(tmp_path / "r.jsonl", rows)])
    assert card["labels"] == {"train": {"pos": 48, "neg": 32}, "validation": {"pos": 6, "neg": 4}, "test": {"pos": 6, "neg": 4}}


def test_explicit_test_file_replaces_the_split_and_leaks_are_removed(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(10)])
    test = write_jsonl(tmp_path / "test.jsonl", [{"prompt": "q3", "completion": "other"}, {"prompt": "new", "completion": "x"}])
    card = prepare(tmp_path, train=[train], test=[test], split={"validation": 0.0, "test": 0.3})
    assert card["splits"] == {"train": 10, "validation": 0, "test": 1}
    assert card["totals"]["leaked"] == 1 and card["totals"]["removed_by_reason"] == {"prompt also in train": 1}
    removed = read_jsonl(tmp_path / "out" / "removed.jsonl")
    assert [(r["file"], r["line"], r["reason"]) for r in removed] == [(test, 1, "prompt also in train")]
    assert [(file["file"], file["part"]) for file in card["files"]] == [(train, "train"), (test, "test")]


def test_split_is_deterministic_per_seed(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": f"q{i}", "completion": "a"} for i in range(50)])

    def test_split(seed: int) -> list:
        prepare_dataset(DataConfig(train=[path]), tmp_path / "out", seed=seed, console=Console(file=io.StringIO()))
        return read_jsonl(tmp_path / "out" / "test.jsonl")

    assert test_split(7) == test_split(7) != test_split(8)


def test_pipeline_errors_say_what_happened(tmp_path):
    with pytest.raises(DomaintuneError, match="data.train is empty"):
        prepare(tmp_path, train=[])
    empty_rows = write_jsonl(tmp_path / "e.jsonl", [{"text": "  "}, {"text": "\n"}])
    with pytest.raises(DomaintuneError, match=r"no usable rows: 2 read, 0 rejected .* 2 removed"):
        prepare(tmp_path, train=[empty_rows])
    assert len(read_jsonl(tmp_path / "out" / "removed.jsonl")) == 2  # written before giving up
    csv = tmp_path / "qa.csv"
    csv.write_text("question,answer\nq,a\n", encoding="utf-8")
    with pytest.raises(DomaintuneError, match=r"qa\.csv line 1: no column 'instruction', 'output', which format 'alpaca' needs"):
        prepare(tmp_path, train=[str(csv)], format="alpaca")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DomaintuneError, match=r"latin\.jsonl line 2: not UTF-8"):
        prepare(tmp_path, train=[str(latin)])


def test_rows_of_a_minified_json_array_are_told_apart(tmp_path):
    rows = [{"text": "short row"}, {"text": "a much longer row " * 20}, {"text": "x"}, {"text": "short row"}]
    path = tmp_path / "min.json"
    path.write_text(json.dumps(rows), encoding="utf-8")  # one line: every row starts on line 1

    def count_tokens(row):
        return len(row["text"].split())

    card = prepare_dataset(
        DataConfig(train=[str(path)], max_tokens=10, min_chars=2, split=SplitConfig(validation=0.0, test=0.0)),
        tmp_path / "out", seed=0, count_tokens=count_tokens, console=Console(file=io.StringIO()),
    )
    removed = read_jsonl(tmp_path / "out" / "removed.jsonl")
    assert sorted((r["line"], r["item"], r["reason"]) for r in removed) == [
        (1, 1, "too long: 80 tokens > 10"),
        (1, 2, "too short: 1 chars < 2"),
        (1, 3, f"duplicate of {path}:1 item 0"),
    ]
    assert [row["source"] for row in read_jsonl(tmp_path / "out" / "train.jsonl")] == [{"file": str(path), "line": 1, "item": 0}]
    assert card["lengths"]["train"]["tokens"]["max"] == 2
