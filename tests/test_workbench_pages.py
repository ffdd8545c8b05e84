"""The workbench's pages over run directories written by hand (no model): the runs page (newest first,
status, headline, filter), a run's event stream (resumes at Last-Event-ID), the comparison table, and a
launched job that fails showing its error."""
import json
import os
import re
import time

from fastapi.testclient import TestClient

from domaintune.workbench import jobs
from domaintune.workbench.app import create_app

RESULTS = {
    "models": {"base": {"metrics": {"exact_match": 0.2}, "loss": {"test": 2.0}},
               "tuned": {"metrics": {"exact_match": 0.7}, "loss": {"test": 0.5}}},
    "comparison": {"exact_match": {"delta": 0.5, "low": 0.3, "high": 0.7, "verdict": "better"}},
}


def make_run(runs, name, method="lora", results=None, metrics=(), age=0):
    root = runs / name
    (root / "eval").mkdir(parents=True)
    (root / "model").mkdir()
    (root / "recipe.yaml").write_text(f"name: {name}\nmethod: {{name: {method}}}\nobjective: {{name: sft}}\n"
                                      "evaluation: {metrics: [exact_match]}\n", encoding="utf-8")
    (root / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in metrics), encoding="utf-8")
    if results:
        (root / "fingerprint.json").write_text("{}", encoding="utf-8")
        (root / "data").mkdir()
        (root / "data" / "train.jsonl").write_text("", encoding="utf-8")
        (root / "model" / "training.json").write_text(json.dumps({"runtime_seconds": 12.0, "parameters": {
            "trainable": 1000, "share": 0.01}}), encoding="utf-8")
        (root / "eval" / "results.json").write_text(json.dumps(results), encoding="utf-8")
        (root / "export").mkdir()
    stamp = time.time() - age
    os.utime(root / "recipe.yaml", (stamp, stamp))
    return root


def web(runs):
    return TestClient(create_app(runs, poll_seconds=0.05), base_url="http://127.0.0.1:7860", follow_redirects=False)


def test_runs_page_lists_newest_first_with_status_headline_and_filter(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "old-lora", results=RESULTS, age=100)
    make_run(runs, "new-ia3", method="ia3", age=0)
    page = web(runs).get("/").text
    assert page.index("new-ia3") < page.index("old-lora")
    row = re.search(r'<tr class="run" data-status="done">(.*?)</tr>', page, re.S).group(1)
    assert "old-lora" in row and "exact_match 0.200 → 0.700" in row and "better" in row
    filtered = web(runs).get("/", params={"q": "ia3"}).text
    assert "new-ia3" in filtered and "old-lora" not in filtered
    assert "old-lora" in web(runs).get("/", params={"status": "done"}).text


def test_the_event_stream_sends_metrics_and_resumes_after_the_last_id(tmp_path):
    runs = tmp_path / "runs"
    records = [{"step": step, "max_steps": 4, "time": 100.0 + step, "loss": 1.0 / step} for step in (1, 2, 3, 4)]
    make_run(runs, "done", results=RESULTS, metrics=records)
    text = web(runs).get("/runs/done/events").text
    steps = [json.loads(data)["step"] for data in re.findall(r"event: metric\ndata: (.*)\n", text)]
    assert steps == [1, 2, 3, 4] and text.rstrip().endswith("event: end\ndata: {}")
    ids = re.findall(r"id: (\d+)\n", text)
    resumed = web(runs).get("/runs/done/events", headers={"Last-Event-ID": ids[1]}).text  # a reconnect
    assert [json.loads(data)["step"] for data in re.findall(r"event: metric\ndata: (.*)\n", resumed)] == [3, 4]


def test_compare_tabulates_runs_with_intervals(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "a", results=RESULTS, metrics=[{"step": 1, "loss": 2.0}])
    make_run(runs, "b", method="ia3", results=RESULTS)
    page = web(runs).get("/compare", params={"run": ["a", "b"]})
    assert page.status_code == 200
    table = re.search(r'<table id="comparison">(.*?)</table>', page.text, re.S).group(1)
    assert "ia3" in table and "0.700" in table and "[+0.300, +0.700]" in table and "1,000" in table
    assert web(runs).get("/compare", params={"run": ["a"]}).status_code == 400


def test_a_launched_job_that_fails_shows_its_error(tmp_path):
    runs = tmp_path / "runs"
    root = runs / "broken"
    root.mkdir(parents=True)
    (root / "recipe.yaml").write_text(f"name: broken\nmodel: {{name: {tmp_path / 'no-such-model'}}}\n"
                                      "data: {train: [missing.jsonl]}\n", encoding="utf-8")
    jobs.launch(root)
    assert jobs.is_running(root) or jobs.job_files(root)[1] is not None
    deadline = time.monotonic() + 120
    while jobs.is_running(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    page = web(runs).get("/runs/broken").text
    assert re.search(r'id="status" class="status failed">failed<', page)
    assert "no-such-model" in re.search(r'id="error" class="error">(.*?)</div>', page, re.S).group(1)


def test_the_data_card_draws_rows_by_stage_and_by_split(tmp_path):
    runs = tmp_path / "runs"
    root = make_run(runs, "prepared", results=RESULTS)
    card = {"totals": {"read": 40, "rejected": 4, "removed": 6, "kept": 30},
            "stages": [{"stage": "read", "rows": 40}, {"stage": "rejected", "removed": 4},
                       {"stage": "exact duplicates", "removed": 6}],
            "splits": {"train": 24, "validation": 3, "test": 3}, "pii": {"mode": "off", "found": {}}}
    (root / "data" / "data_card.json").write_text(json.dumps(card), encoding="utf-8")
    page = web(runs).get("/runs/prepared").text
    chart = re.search(r'<svg id="rows-chart".*?</svg>', page, re.S).group(0)
    bars = re.findall(r'<g class="bar (stage|split)" data-label="([^"]+)" data-rows="(\d+)"[^>]*>.*?width="([\d.]+)"', chart, re.S)
    assert [(kind, label, int(rows)) for kind, label, rows, _ in bars] == [
        ("stage", "read", 40), ("stage", "rejected", 36), ("stage", "exact duplicates", 30),
        ("split", "train", 24), ("split", "validation", 3), ("split", "test", 3)]
    widths = [float(width) for *_, width in bars]
    assert widths[0] == max(widths) and abs(widths[3] / widths[0] - 24 / 40) < 0.01  # one scale for all bars


def test_a_multitask_run_shows_its_tasks_data_card(tmp_path):
    runs = tmp_path / "runs"
    root = make_run(runs, "multitask", results=RESULTS)
    card = {"splits": {"train": 30, "validation": 4, "test": 4},  # what objectives.multitask writes: no totals
            "tasks": {"ner": {"weight": 2.0, "tag": "[ner]", "train": 10, "validation": 2, "test": 2},
                      "qa": {"weight": 1.0, "tag": None, "train": 10, "validation": 2, "test": 2}}}
    (root / "data" / "data_card.json").write_text(json.dumps(card), encoding="utf-8")
    response = web(runs).get("/runs/multitask")
    assert response.status_code == 200
    table = re.search(r'<table id="data-card">(.*?)</table>', response.text, re.S).group(1)
    assert "train 30 · validation 4 · test 4" in table and "read" not in table
    tasks = re.findall(r'<tr class="task"><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>',
                       response.text)
    assert tasks == [("ner", "2.0", "[ner]", "train 10 · validation 2 · test 2"),
                     ("qa", "1.0", "–", "train 10 · validation 2 · test 2")]


def test_a_run_with_an_unreadable_file_is_listed_as_unreadable_and_the_others_as_usual(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "good", results=RESULTS)
    (make_run(runs, "cut-short") / "workbench").mkdir()
    (runs / "cut-short" / "workbench" / "result.json").write_text('{"state": "do', encoding="utf-8")
    make_run(runs, "binary", results=RESULTS)
    (runs / "binary" / "eval" / "results.json").write_bytes(b"\xff\xfe{}")
    make_run(runs, "bad-line", metrics=[{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}])
    (runs / "bad-line" / "metrics.jsonl").write_text('{"step": 1}\n{"step": \n{"step": 3}\n', encoding="utf-8")
    response = web(runs).get("/")
    assert response.status_code == 200
    row = r'<tr class="run" data-status="(\w+)">.*?<a href="/runs/([\w-]+)">.*?<td class="status[^"]*">(.*?)</td>'
    rows = {name: (status, error) for status, name, error in re.findall(row, response.text, re.S)}
    statuses = {name: status for name, (status, _) in rows.items()}
    assert statuses == {"good": "done", "cut-short": "unreadable", "binary": "unreadable", "bad-line": "unreadable"}
    assert "result.json: not valid JSON" in rows["cut-short"][1] and "metrics.jsonl line 2" in rows["bad-line"][1]
    assert "exact_match 0.200 → 0.700" in response.text  # the good run's headline
    assert "unreadable" in web(runs).get("/", params={"status": "unreadable"}).text


def test_a_negative_or_stale_last_event_id_starts_the_stream_over(tmp_path):
    runs = tmp_path / "runs"
    records = [{"step": step, "max_steps": 4, "time": 100.0 + step, "loss": 1.0 / step} for step in (1, 2, 3, 4)]
    make_run(runs, "done", results=RESULTS, metrics=records)
    second_line = len(json.dumps(records[0])) + 1
    # A stale id (sent before the log was rewritten from a checkpoint) can land in the middle of a line.
    for last_id in ("-5", str(second_line + 3)):
        text = web(runs).get("/runs/done/events", headers={"Last-Event-ID": last_id}).text
        steps = [json.loads(data)["step"] for data in re.findall(r"event: metric\ndata: (.*)\n", text)]
        assert steps == [1, 2, 3, 4], last_id
        assert ("event: reset" in text) == (last_id != "-5"), last_id  # the page drops what it drew from the old log


def test_a_metric_line_holding_a_line_separator_resumes_at_the_next_line(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "done", results=RESULTS)
    records = [{"step": 1, "note": "a\u2028b"}, {"step": 2}, {"step": 3}]  # written raw, as ensure_ascii=False does
    (runs / "done" / "metrics.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                                                 encoding="utf-8")
    text = web(runs).get("/runs/done/events").text
    ids = re.findall(r"id: (\d+)\n", text)
    assert int(ids[0]) == len(json.dumps(records[0], ensure_ascii=False).encode()) + 1
    resumed = web(runs).get("/runs/done/events", headers={"Last-Event-ID": ids[0]}).text
    assert "event: reset" not in resumed
    assert [json.loads(data)["step"] for data in re.findall(r"event: metric\ndata: (.*)\n", resumed)] == [2, 3]
