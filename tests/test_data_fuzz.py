"""Hostile and malformed data files never break `data prepare`: a few hundred generated cases
in-process (bench/fuzz_data.py runs the long campaign), and the real CLI on a handful."""
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_fuzzer():
    spec = importlib.util.spec_from_file_location("fuzz_data", ROOT / "bench" / "fuzz_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_few_hundred_hostile_cases_keep_every_invariant(capsys):
    outcomes, failures = load_fuzzer().campaign(300)
    with capsys.disabled():
        print(f"\nfuzz: {dict(sorted((k, v) for k, v in outcomes.items() if ':' not in k))}")
    assert not failures, "\n\n".join(failures[:5])
    assert outcomes["ok"] + outcomes["user error"] == 300
    assert outcomes["ok"] >= 50 and outcomes["user error"] >= 50  # both paths are exercised


def test_the_fuzzer_catches_a_lost_row(tmp_path, monkeypatch):
    """The invariants can fail: a reader that drops a JSONL line is caught."""
    fuzz = load_fuzzer()
    import domaintune.data.readers as readers

    original = readers._read_jsonl
    monkeypatch.setattr(readers, "_read_jsonl", lambda path, text: list(original(path, text))[1:])
    rows = b'{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n'
    try:
        fuzz.check_case(tmp_path, [("jsonl", rows)])
    except AssertionError as error:
        assert "neither a row nor rejected" in str(error)
    else:
        raise AssertionError("a dropped row went unnoticed")


def cli(tmp_path: Path, model: Path, files: list[Path]) -> subprocess.CompletedProcess:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({"name": "fuzz", "output_dir": str(tmp_path / "runs"), "model": {"name": str(model)},
                                  "data": {"train": [str(path) for path in files]}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = "import sys; from domaintune.cli import main; sys.argv[0] = 'domaintune'; main()"  # the console script
    return subprocess.run([sys.executable, "-c", command, "data", "prepare", str(recipe)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_the_cli_keeps_hostile_rows_aside_and_refuses_broken_files_without_a_traceback(tmp_path, tiny_model_dir):
    import docx

    good = [{"prompt": f"Question {i}?", "completion": f"Answer number {i}."} for i in range(12)]
    jsonl = tmp_path / "deep.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in good) + '{"prompt": ' + "[" * 100_000 + "\n")
    table = tmp_path / "wide.csv"
    table.write_text("prompt,completion\nshort,fine\n" + f'"{"x" * 140_000}",long\n')
    minified = tmp_path / "min.json"
    minified.write_text(json.dumps([{"prompt": "a b c d", "completion": "e f g h"}, {"prompt": "p", "completion": "q" * 20}]))
    document = docx.Document()
    document.add_paragraph("A policy.")
    document.save(tmp_path / "bomb.docx")
    with zipfile.ZipFile(tmp_path / "bomb.docx", "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/media/zeros.bin", b"\0" * 60_000_000)
    result = cli(tmp_path, tiny_model_dir, [jsonl, table, minified, tmp_path / "bomb.docx"])
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "skipped" in result.stderr and "bomb.docx" in result.stderr
    card = json.loads(next((tmp_path / "runs").glob("*/data/data_card.json")).read_text())
    totals = card["totals"]
    assert totals["read"] == 13 + 2 + 2 and totals["rejected"] >= 2
    assert totals["read"] == totals["rejected"] + totals["removed"] + totals["kept"]

    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"\xff\xfe{\x00")
    result = cli(tmp_path, tiny_model_dir, [broken])
    assert result.returncode == 2 and "broken.jsonl" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
