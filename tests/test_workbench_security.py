"""The workbench refuses hostile requests: a post without the page's CSRF token, another Host, a
non-loopback bind without a token, a request without the token, an upload or form over its cap (refused
before it is read), and any path that leaves the runs folder. No model is loaded here (fast)."""
import re
import time

import anyio
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from domaintune.cli import app as cli_app
from domaintune.core.errors import DomaintuneError
from domaintune.core.local_pages import FORM_BODY_CAP
from domaintune.workbench.app import create_app
from domaintune.workbench.guard import check_bind


def client(runs, token=None, cap=1000, host="127.0.0.1"):
    return TestClient(create_app(runs, token=token, upload_cap=cap), base_url=f"http://{host}:7860",
                      follow_redirects=False)


def csrf_of(page_text: str) -> str:
    return re.search(r'name="csrf" content="([^"]+)"', page_text).group(1)


def fake_run(runs, name="demo-20260101-000000"):
    root = runs / name
    (root / "eval").mkdir(parents=True)
    (root / "recipe.yaml").write_text("name: demo\nmethod: {name: lora}\n", encoding="utf-8")
    (root / "eval" / "results.json").write_text("{}", encoding="utf-8")
    return root


def test_posts_without_the_page_token_are_refused(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs)
    web = client(runs)
    token = csrf_of(web.get("/").text)
    recipe = "name: x\ndata: {train: [a.jsonl]}\n"
    # Any web page the user visits can post to 127.0.0.1, but it can't read the page's token.
    assert web.post("/launch", data={"recipe": recipe}).status_code == 403
    assert web.post("/launch", data={"recipe": recipe, "csrf": "guessed"}).status_code == 403
    assert web.post("/runs/demo-20260101-000000/resume", data={}).status_code == 403
    assert web.post("/runs/demo-20260101-000000/stop", data={}).status_code == 403
    assert web.post("/upload?name=a.jsonl", content=b'{"text": "x"}\n').status_code == 403
    assert sorted(path.name for path in runs.iterdir()) == ["demo-20260101-000000"]  # nothing launched or written
    assert not (runs / "demo-20260101-000000" / "workbench").exists()
    # With the token the same requests go through (a stop of a run that isn't running is a 409).
    assert web.post("/runs/demo-20260101-000000/stop", data={"csrf": token}).status_code == 409
    assert web.post("/upload?name=a.jsonl", content=b'{"text": "x"}\n', headers={"X-CSRF-Token": token}).status_code == 200


def test_another_host_name_is_refused(tmp_path):
    web = client(tmp_path / "runs")
    assert web.get("/").status_code == 200
    # DNS rebinding: the attacker's own name resolves to 127.0.0.1, so the Host header names it.
    assert web.get("/", headers={"Host": "attacker.example:7860"}).status_code == 403
    assert client(tmp_path / "runs", host="localhost").get("/").status_code == 200


def test_a_non_loopback_bind_needs_a_token(tmp_path):
    with pytest.raises(DomaintuneError, match="needs --token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "secret")
    check_bind("::1", None)
    result = CliRunner().invoke(cli_app, ["ui", "--runs", str(tmp_path / "runs"), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "needs --token" in result.output
    assert "Traceback" not in result.output


def test_with_a_token_every_request_carries_it(tmp_path):
    web = client(tmp_path / "runs", token="s3cret")
    assert web.get("/").status_code == 401
    assert web.get("/?token=wrong").status_code == 401
    first = web.get("/?token=s3cret")
    assert first.status_code == 200
    assert web.get("/").status_code == 200  # the cookie set by the first visit


def test_an_upload_over_the_cap_is_refused_and_not_written(tmp_path):
    runs = tmp_path / "runs"
    web = client(runs, cap=1000)
    token = csrf_of(web.get("/").text)
    response = web.post("/upload?name=big.jsonl", content=b"x" * 1001, headers={"X-CSRF-Token": token})
    assert response.status_code == 413 and "upload cap" in response.text

    def chunks():  # no Content-Length: the cap is counted as the body arrives
        for _ in range(5):
            yield b"y" * 300

    response = web.post("/upload?name=big.jsonl", content=chunks(), headers={"X-CSRF-Token": token})
    assert response.status_code == 413
    assert not list((runs / "uploads").glob("*")) if (runs / "uploads").exists() else True
    # Only data files, and only under their own name inside runs/uploads.
    response = web.post("/upload?name=../../evil.sh", content=b"echo", headers={"X-CSRF-Token": token})
    assert response.status_code == 400 and not (tmp_path / "evil.sh").exists()
    response = web.post("/upload?name=../../ok.jsonl", content=b'{"text": "x"}\n', headers={"X-CSRF-Token": token})
    assert response.status_code == 200 and re.fullmatch(r"uploads/\d{8}-\d{6}-ok\.jsonl", response.json()["file"])


def test_paths_outside_the_runs_folder_are_refused(tmp_path):
    runs = tmp_path / "runs"
    root = fake_run(runs)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not show", encoding="utf-8")
    (root / "eval" / "link.txt").symlink_to(secret)
    web = client(runs)
    token = csrf_of(web.get("/").text)
    name = root.name
    assert web.get(f"/runs/{name}/files/eval/results.json").status_code == 200
    for path in ("../../secret.txt", "..%2F..%2Fsecret.txt", "eval/link.txt", str(secret)):
        response = web.get(f"/runs/{name}/files/{path}")
        assert response.status_code in (403, 404) and "do not show" not in response.text, path
    for run in ("..%2F..", "..%2F..%2Ftmp", "uploads", "%2Fetc"):
        assert web.get(f"/runs/{run}").status_code == 404, run
    preview = web.get("/new", params={"data": "../secret.txt"})
    assert "outside the runs folder" in preview.text and "do not show" not in preview.text
    # A recipe's data files must be inside the runs folder too.
    recipe = f"name: x\ndata:\n  train: [{secret}]\n"
    response = web.post("/launch", data={"recipe": recipe, "csrf": token})
    assert response.status_code == 400 and "outside the runs folder" in response.text
    assert sorted(path.name for path in runs.iterdir()) == [name]


def test_every_file_a_recipe_reads_must_be_inside_the_runs_folder(tmp_path):
    from domaintune.workbench.newrun import check_recipe

    runs = tmp_path / "runs"
    (runs / "uploads").mkdir(parents=True)
    inside_file = runs / "uploads" / "a.jsonl"
    inside_file.write_text('{"prompt": "a", "completion": "b"}\n', encoding="utf-8")
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"prompt": "private", "completion": "do not show"}\n', encoding="utf-8")
    recipe = f"""name: x
data:
  train: [uploads/a.jsonl]
  contamination: {{benchmarks: [{secret}]}}
objective:
  name: multitask
  tasks:
    - {{name: one, train: [uploads/a.jsonl]}}
    - {{name: two, train: [{secret}]}}
evaluation: {{harness_files: [../secret.jsonl]}}
stages:
  - data: {{train: [{secret}]}}
  - label: second
"""
    checked, problems = check_recipe(runs, recipe)
    assert checked is None
    assert {problem["field"] for problem in problems} == {
        "data.contamination.benchmarks.0", "objective.tasks.1.train.0", "evaluation.harness_files.0",
        "stages.0.data.train.0", "stages"}
    assert all("outside the runs folder" in problem["message"] for problem in problems if problem["field"] != "stages")
    # A job here is one run: a curriculum is refused with what to do instead, rather than failing in the job.
    assert "domaintune run" in next(problem["message"] for problem in problems if problem["field"] == "stages")
    # Inside the runs folder, a relative path is resolved against it.
    checked, problems = check_recipe(runs, "name: x\ndata: {train: [uploads/a.jsonl]}\n")
    assert problems == [] and checked.data.train == [str(inside_file.resolve())]


def test_a_recipe_from_the_page_may_not_name_a_reward_function(tmp_path):
    from domaintune.workbench.newrun import check_recipe

    runs = tmp_path / "runs"
    runs.mkdir()
    recipe = "name: x\ndata: {train: [a.jsonl]}\nobjective: {name: grpo, rewards: [{regex: 'yes'}, {function: 'os:system'}]}\n"
    checked, problems = check_recipe(runs, recipe)
    assert checked is None and [problem["field"] for problem in problems] == ["objective.rewards.1.function"]
    assert "runs code" in problems[0]["message"]


def test_recipe_errors_are_shown_at_their_field(tmp_path):
    runs = tmp_path / "runs"
    (runs / "uploads").mkdir(parents=True)
    (runs / "uploads" / "a.jsonl").write_text('{"prompt": "a", "completion": "b"}\n', encoding="utf-8")
    web = client(runs)
    token = csrf_of(web.get("/").text)
    recipe = "name: x\ndata:\n  train: [uploads/a.jsonl]\ntraining:\n  epochs: 1\n  lr: fast\n"
    response = web.post("/launch", data={"recipe": recipe, "csrf": token})
    assert response.status_code == 400
    assert re.search(r"line 6: <b>training.lr</b>: input should be a valid number", response.text)
    response = web.post("/launch", data={"recipe": "name: [x\n", "csrf": token})
    assert response.status_code == 400 and "not valid YAML" in response.text


def post_unbuffered(app, path: str, body_chunks, headers=()) -> tuple[int, int]:
    """POST straight into the ASGI app, handing over the body a chunk at a time only as the app asks for it
    (a test client would buffer it all first): the status and how many bytes the app took."""
    taken, chunks, started = 0, iter(body_chunks), []

    async def receive():
        nonlocal taken
        chunk = next(chunks, b"")
        taken += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunk)}

    async def send(message):
        if message["type"] == "http.response.start":
            started.append(message["status"])

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 7860),
             "headers": [(b"host", b"127.0.0.1:7860"), (b"content-type", b"application/x-www-form-urlencoded"),
                         *headers]}
    anyio.run(app, scope, receive, send)
    return started[0], taken


def test_an_oversized_form_is_refused_before_it_is_read(tmp_path):
    """Any web page can post to 127.0.0.1 without the token: the body must not be read whole to find it missing."""
    app = create_app(tmp_path / "runs")
    megabyte = b"a" * 2**20
    for path in ("/launch", "/estimate", "/runs/demo/stop"):
        # A declared length over the cap: refused before a byte is read.
        status, taken = post_unbuffered(app, path, [b"recipe=", *[megabyte] * 16],
                                        [(b"content-length", str(7 + 16 * 2**20).encode())])
        assert (status, taken) == (413, 0), path
        # No length declared (chunked): read only up to the cap.
        status, taken = post_unbuffered(app, path, [b"recipe=", *[megabyte] * 16])
        assert status == 413 and taken <= FORM_BODY_CAP + len(megabyte), (path, taken)


def test_the_same_file_uploaded_twice_in_a_second_is_kept_twice(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    web = client(runs)
    token = csrf_of(web.get("/").text)
    monkeypatch.setattr(time, "strftime", lambda format: "20260101-000000")  # both in the same second
    first, second, third = (web.post("/upload?name=d.jsonl", content=content, headers={"X-CSRF-Token": token})
                            for content in (b'{"text": "first"}\n', b'{"text": "second"}\n', b'{"text": "third"}\n'))
    assert [response.json()["file"] for response in (first, second, third)] == [
        "uploads/20260101-000000-d.jsonl", "uploads/20260101-000000.2-d.jsonl", "uploads/20260101-000000.3-d.jsonl"]
    assert (runs / second.json()["file"]).read_bytes() == b'{"text": "second"}\n'
    assert (runs / first.json()["file"]).read_bytes() == b'{"text": "first"}\n'


def test_names_the_file_system_cant_take_are_refused_without_a_crash(tmp_path):
    """A NUL byte or an over-long name in a run, a download, a preview or a recipe's data path: a 4xx, not a 500."""
    runs = tmp_path / "runs"
    root = fake_run(runs)
    web = TestClient(create_app(runs), base_url="http://127.0.0.1:7860", raise_server_exceptions=False)
    token = csrf_of(web.get("/").text)
    for bad in ("a%00b", "a" * 300):
        assert web.get(f"/runs/{bad}").status_code == 404, bad
        assert web.get(f"/runs/{root.name}/files/eval/{bad}").status_code in (403, 404), bad
        preview = web.get(f"/new?data=uploads/{bad}.jsonl")
        assert preview.status_code == 200 and 'id="preview-error"' in preview.text, bad
    response = web.post("/launch", data={"recipe": 'name: x\ndata: {train: ["a\\0b.jsonl"]}\n', "csrf": token})
    assert response.status_code == 400 and "not a valid path" in response.text
    assert sorted(path.name for path in runs.iterdir()) == [root.name]
