"""The feedback page in a real headless Chromium: choices persist at once, resume after a reload,
export to the pairwise format, and a base-vs-tuned session writes eval/feedback.jsonl for the judge."""
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from domaintune.core.errors import DomaintuneError
from domaintune.evaluation import judge
from domaintune.evaluation.feedback import create_app, export_pairs, item_view, prepare_session, session_summary

CHROMIUM = Path("/usr/bin/chromium")


def fake_run(tmp_path: Path, items: int) -> Path:
    """A run directory with evaluated samples: what a base-vs-tuned session reads (no model needed)."""
    root = tmp_path / "run"
    (root / "eval").mkdir(parents=True)
    (root / "recipe.yaml").write_text("name: fake\n", encoding="utf-8")
    samples = [{"prompt": f"question {i}", "reference": f"ref {i}", "base": f"base answer {i}", "tuned": f"tuned answer {i}"}
               for i in range(items)]
    (root / "eval" / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
    (root / "eval" / "results.json").write_text(json.dumps({"preference": {"curves": {}}}), encoding="utf-8")
    return root


@pytest.fixture
def server(tmp_path):
    """Serve a 3-item base-vs-tuned session on a free 127.0.0.1 port; stops after the test."""
    import uvicorn

    root = fake_run(tmp_path, 3)
    db = root / "eval" / "feedback.db"
    prepare_session(str(root), db)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(create_app(db), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/", root, db
    uv.should_exit = True
    thread.join(timeout=10)


def shown_sources(db: Path, item: int) -> dict[str, str]:
    """Letter on the page -> which model wrote that answer (the page itself never says)."""
    view = item_view(db, item)
    return {answer["letter"]: answer["text"].split()[0] for answer in view["answers"]}


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (make test installs it)")
def test_choices_persist_resume_and_export(server, tmp_path):
    from playwright.sync_api import sync_playwright

    url, root, db = server
    letter_of = {source: letter for letter, source in shown_sources(db, 0).items()}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page()
        page.goto(url)
        assert "0 of 3 judged" in page.inner_text("#progress")
        assert page.locator("form#item-0").count() == 1
        page.select_option("select[name='rating-0']", "4")
        page.click(f"#pick-{letter_of['tuned']}")  # item 0: tuned is better
        page.wait_for_selector("form#item-1")
        page.click("#pick-tie")  # item 1: a tie
        page.wait_for_selector("form#item-2")
        assert "tuned wins 1, base wins 0, ties 1" in page.inner_text("#winrate")
        browser.close()  # the browser goes away mid-session

        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page()
        page.goto(url)
        assert "2 of 3 judged" in page.inner_text("#progress")
        assert page.locator("form#item-2").count() == 1  # resumes at the first item without a choice
        base_letter = {source: letter for letter, source in shown_sources(db, 2).items()}["base"]
        page.click(f"#pick-{base_letter}")
        page.wait_for_selector("#done")
        page.reload()
        assert page.locator("#done").count() == 1 and "3 of 3 judged" in page.inner_text("#progress")
        browser.close()

    assert judge.read_feedback(root / "eval" / "feedback.jsonl") == {0: "tuned", 1: "tie", 2: "base"}
    summary = session_summary(db)
    assert summary["wins"] == {"tuned": 1, "tie": 1, "base": 1} and summary["tuned_win_rate"] == 0.5
    assert summary["interval"][0] < 0.5 < summary["interval"][1]
    assert "Base vs tuned by people" in (root / "preferences.html").read_text(encoding="utf-8")
    result = export_pairs(db, tmp_path / "pairs.jsonl")
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert result == {"pairs": 2, "ties": 1, "out": str(tmp_path / "pairs.jsonl")}
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        ([{"role": "user", "content": "question 0"}], "tuned answer 0", "base answer 0"),
        ([{"role": "user", "content": "question 2"}], "base answer 2", "tuned answer 2"),
    ]


def test_a_model_session_samples_answers_and_exports_loadable_pairs(tmp_path, tiny_model_dir):
    from domaintune.config import DataConfig
    from domaintune.data.formats import to_canonical

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is a loan?\nName a bank.\n", encoding="utf-8")
    db = tmp_path / "session.db"
    summary = prepare_session(str(tiny_model_dir), db, prompts, samples=2, max_new_tokens=6, seed=1)
    assert summary == {"kind": "samples", "source": str(tiny_model_dir), "total": 2, "done": 0}
    view = item_view(db)
    assert view["prompt"] == [{"role": "user", "content": "What is a loan?"}] and len(view["answers"]) == 2
    assert prepare_session(str(tiny_model_dir), db, prompts)["total"] == 2  # an existing session resumes as it is
    with pytest.raises(DomaintuneError, match="holds a session for"):
        prepare_session(str(tmp_path / "another-model"), db, prompts)
    from domaintune.evaluation.feedback import record_choice

    record_choice(db, 0, 1)
    export_pairs(db, tmp_path / "pairs.jsonl")
    for line in (tmp_path / "pairs.jsonl").read_text(encoding="utf-8").splitlines():
        row = to_canonical(json.loads(line), "pairwise", DataConfig())  # the export is valid pairwise data
        assert row["messages"][-1]["content"] == view["answers"][1]["text"]


def session_client(tmp_path, host: str = "127.0.0.1"):
    """A TestClient on a 2-item base-vs-tuned session, reaching the page by `host`."""
    from fastapi.testclient import TestClient

    root = fake_run(tmp_path, 2)
    db = root / "eval" / "feedback.db"
    prepare_session(str(root), db)
    return TestClient(create_app(db), base_url=f"http://{host}:8765", follow_redirects=False), db


def page_token(client) -> str:
    import re

    page = client.get("/")
    assert page.status_code == 200
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def test_a_post_without_the_page_token_or_from_another_host_is_refused(tmp_path):
    client, db = session_client(tmp_path)
    token = page_token(client)
    form = {"item": "0", "choice": "0"}
    # Another web page can post this form to 127.0.0.1, but it can't read the page's token.
    assert client.post("/choose", data=form).status_code == 403
    assert client.post("/choose", data={**form, "csrf": "guessed"}).status_code == 403
    # DNS rebinding: the attacker's own name resolves to 127.0.0.1, so the Host header names it.
    rebound = {"Host": "attacker.example:8765"}
    assert client.get("/", headers=rebound).status_code == 403
    assert client.post("/choose", data={**form, "csrf": token}, headers=rebound).status_code == 403
    assert session_summary(db)["done"] == 0
    assert client.post("/choose", data={**form, "csrf": token}).status_code == 303
    assert session_summary(db)["done"] == 1
    # localhost is this machine too; a token from one session is no use against another.
    localhost, _ = session_client(tmp_path / "other", "localhost")
    assert localhost.post("/choose", data={**form, "csrf": token}).status_code == 403
    assert localhost.post("/choose", data={**form, "csrf": page_token(localhost)}).status_code == 303


def test_the_bound_host_is_allowed_too(tmp_path):
    from fastapi.testclient import TestClient

    root = fake_run(tmp_path, 1)
    db = root / "eval" / "feedback.db"
    prepare_session(str(root), db)
    client = TestClient(create_app(db, host="annotate.lan"), base_url="http://annotate.lan:8765")
    assert client.get("/").status_code == 200
    assert TestClient(create_app(db, host="annotate.lan"), base_url="http://other.lan").get("/").status_code == 403


@pytest.mark.parametrize("body", [
    "rating-x=1&item=0&choice=0", "rating-0=%C2%B2&item=0&choice=0", "item=zz&choice=0", "item=0&choice=9",
    "item=0", "choice=0", "item=99&choice=0", b"item=0&choice=0&x=\xff\xfe",
])
def test_bad_form_values_are_400(tmp_path, body):
    client, db = session_client(tmp_path)
    token = page_token(client)
    body = body if isinstance(body, bytes) else body.encode()
    response = client.post("/choose", content=body + b"&csrf=" + token.encode(),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400, response.text
    assert session_summary(db)["done"] == 0


def test_a_run_session_shows_and_exports_the_whole_prompt_the_models_answered(tmp_path):
    from domaintune.evaluation.base_vs_tuned import generation_samples
    from domaintune.evaluation.feedback import record_choice

    conversation = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Capital of Italy?"},
                    {"role": "assistant", "content": "Rome"}, {"role": "user", "content": "And of Spain?"},
                    {"role": "assistant", "content": "Madrid"}]
    root = fake_run(tmp_path, 0)
    samples = generation_samples([{"messages": conversation}], {"base": ["Madrid"], "tuned": ["C'est Madrid."]})
    (root / "eval" / "samples.jsonl").write_text(json.dumps(samples[0]) + "\n", encoding="utf-8")
    db = root / "eval" / "feedback.db"
    prepare_session(str(root), db)
    # Annotators see the system prompt and the earlier turns, not just the last question...
    view = item_view(db, 0)
    assert view["prompt"] == conversation[:-1]
    tuned = next(answer["slot"] for answer in view["answers"] if answer["source"] == "tuned")
    record_choice(db, 0, tuned)
    # ...and the exported pair is trained on the prompt the answers were generated with.
    export_pairs(db, tmp_path / "pairs.jsonl")
    [pair] = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert pair["prompt"] == conversation[:-1] and pair["chosen"] == "C'est Madrid."
