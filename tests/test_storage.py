"""The one reader and writer of the files domaintune writes itself, and the run directory over them."""
import json

import pytest

from domaintune.core.errors import DomaintuneError
from domaintune.storage.jsonl import read_json, read_jsonl, write_json, write_jsonl
from domaintune.storage.rundir import RunDir


def test_jsonl_round_trip_keeps_line_separators_inside_values(tmp_path):
    records = [{"answer": "one\u2028two"}, {"answer": "plain", "n": 2}]
    write_jsonl(tmp_path / "a.jsonl", records)
    assert read_jsonl(tmp_path / "a.jsonl") == records


def test_a_partial_last_line_is_skipped_but_a_bad_middle_line_is_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')  # killed mid-write
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(DomaintuneError, match=r"metrics.jsonl line 2: not valid JSON"):
        read_jsonl(path)


def test_a_file_that_is_not_utf8_is_a_user_error_naming_it(tmp_path):
    (tmp_path / "result.json").write_bytes(b'{"score": "\xff"}')
    (tmp_path / "metrics.jsonl").write_bytes(b'{"loss": 1}\n\xff\n')
    for read in (lambda: read_json(tmp_path / "result.json"), lambda: read_jsonl(tmp_path / "metrics.jsonl")):
        with pytest.raises(DomaintuneError, match="not UTF-8"):
            read()


def test_missing_files_read_as_empty_and_bad_json_is_a_user_error(tmp_path):
    assert read_jsonl(tmp_path / "none.jsonl") == []
    assert read_json(tmp_path / "none.json", {}) == {}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DomaintuneError, match="bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "train.jsonl"
    write_jsonl(target, [{"row": 1}])

    def rows_then_a_crash():
        yield {"row": 2}
        raise OSError("No space left on device")

    with pytest.raises(OSError):
        write_jsonl(target, rows_then_a_crash())
    assert read_jsonl(target) == [{"row": 1}]
    write_json(tmp_path / "result.json", {"status": "finished"})
    assert read_json(tmp_path / "result.json") == {"status": "finished"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["result.json", "train.jsonl"]  # no staging left


def test_run_directory_writes_and_reads_results_samples_and_summary(tmp_path):
    run = RunDir(tmp_path)
    assert run.results() == {} and run.samples() == [] and run.training_summary() == {}
    run.write_results({"models": {"tuned": {}}}, [{"prompt": "p", "tuned": "t"}])
    run.write_training_summary({"global_step": 3})
    assert run.results() == {"models": {"tuned": {}}}
    assert run.samples() == [{"prompt": "p", "tuned": "t"}]
    assert json.loads((run.model / "training.json").read_text())["global_step"] == 3
    run.data.mkdir()
    write_jsonl(run.data / "train.jsonl", [{"text": "a"}])
    assert run.read_split("train") == [{"text": "a"}] and run.read_split("test") == []


def test_the_latest_run_is_the_one_made_last_not_the_one_touched_last(tmp_path):
    import os

    from domaintune.config import validate_recipe

    recipe = validate_recipe({"name": "demo", "output_dir": str(tmp_path)})
    for name in ("demo-20260101-000000", "demo-20260102-000000", "demo-20260102-000000-2", "demo-old"):
        (tmp_path / name).mkdir()
        RunDir(tmp_path / name).write_recipe(recipe)
    os.utime(tmp_path / "demo-20260101-000000")  # an older run evaluated just now
    assert RunDir.latest(recipe).root.name == "demo-20260102-000000-2"
