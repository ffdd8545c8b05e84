"""The workbench in a real headless Chromium on a tiny model: upload a file with one bad row and see its
line and reason before anything trains, launch the run from the page, watch the step counter and the
loss update live (Server-Sent Events), and open the finished run's evaluation; chat in the arena with
both answers streamed and a blind preference recorded in the run's feedback store."""
import json
from pathlib import Path

import pytest
import yaml
from conftest import free_port, live_server, make_trained_run

from domaintune.evaluation.feedback import export_pairs
from domaintune.evaluation.judge import read_feedback
from domaintune.workbench.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
# slow: the launched run is a real job process (prepare, train, evaluate, export): ~40 s of the ~100 s.
pytestmark = [pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (make test installs it)"),
              pytest.mark.slow]


def browser_page(playwright):
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                         args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
    return browser, browser.new_page()


def test_upload_see_rejected_row_launch_watch_and_open_the_finished_run(tmp_path, tiny_recipe, qa_rows):
    from playwright.sync_api import sync_playwright

    runs = tmp_path / "runs"
    data = tmp_path / "offices.jsonl"
    lines = [json.dumps(row) for row in qa_rows]
    lines.insert(3, json.dumps({"messages": [{"role": "user", "content": "a question with no answer"}]}))
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")

    with live_server(create_app(runs, poll_seconds=0.2), free_port()) as url, sync_playwright() as playwright:
        browser, page = browser_page(playwright)
        page.goto(f"{url}/new")
        page.set_input_files("#file", str(data))
        page.click("#upload")
        page.wait_for_selector("#rejected")
        assert page.inner_text("#format") == "chat"
        rejected = page.inner_text("#rejected")
        assert "4\tmessages[0].role: the last message must be the assistant's" in rejected  # line 4, its reason
        assert "60 accepted, 1 rejected" in page.inner_text("#detected")
        assert page.locator("#preview mark").first.inner_text().startswith("[Paris - LOCATION]")

        recipe = yaml.safe_load(page.input_value("#recipe"))
        uploaded = recipe["data"]["train"][0]
        assert uploaded.startswith("uploads/") and (runs / uploaded).is_file()
        tiny = {**tiny_recipe, "name": "offices", "data": {**tiny_recipe["data"], "train": [uploaded]}}
        tiny["training"] = {**tiny["training"], "max_steps": 20, "save_every": 10, "eval_every": 10}
        page.fill("#recipe", yaml.safe_dump(tiny))
        page.click("#launch")
        page.wait_for_url("**/runs/offices-*")
        # Every value the step counter shows, as the page updates it from the event stream.
        page.evaluate("""() => { window.seen = [];
            new MutationObserver(() => seen.push(document.getElementById('progress').textContent))
              .observe(document.getElementById('progress'), {childList: true, characterData: true, subtree: true}); }""")
        # The counter moves while the run trains: at least two different steps shown before it ends.
        page.wait_for_function("new Set(window.seen.filter(text => text.startsWith('step'))).size >= 2", timeout=90_000)
        assert page.inner_text("#status") == "training" and "loss" in page.inner_text("#latest")
        page.wait_for_selector("#evaluation", timeout=120_000)  # the page reloads once the run is over
        assert page.inner_text("#status") == "done"
        assert "exact_match" in page.inner_text("#evaluation")
        assert page.get_attribute("#report-link", "href").endswith("/files/report.html")
        assert "model/training.json" in page.inner_text("#artefacts")
        run_name = page.url.rsplit("/", 1)[1]

        page.goto(url)
        row = page.locator("tr.run").first
        assert run_name in row.inner_text() and "done" in row.inner_text() and "entity_f1" in row.inner_text()
        browser.close()

    root = runs / run_name
    assert (root / "report.html").is_file() and (root / "export").is_dir()
    steps = [record["step"] for record in map(json.loads, (root / "metrics.jsonl").read_text().splitlines())]
    assert max(steps) == 20


def test_arena_streams_both_answers_and_records_a_blind_preference(tmp_path, tiny_model_dir):
    from playwright.sync_api import sync_playwright

    runs = tmp_path / "runs"
    root = make_trained_run(runs, tiny_model_dir)
    with live_server(create_app(runs), free_port()) as url, sync_playwright() as playwright:
        browser, page = browser_page(playwright)
        page.goto(f"{url}/runs/{root.name}")
        page.click("#arena-link")
        # Every change of an answer's text as the page receives it: streamed, an answer grows in pieces.
        page.evaluate("""() => { window.growth = 0;
            new MutationObserver(changes => { growth += changes.filter(c => c.target.className === 'text').length; })
              .observe(document.getElementById('transcript'), {childList: true, subtree: true}); }""")
        page.fill("#message", "Where is the office?")
        page.click("#send")
        page.wait_for_selector(".turn.complete", timeout=60_000)
        assert page.evaluate("window.growth") > 4  # pieces of both answers, not two whole answers at once
        columns = page.locator(".turn").first.locator(".answer")
        assert [columns.nth(i).locator(".who").inner_text() for i in range(2)] == ["base", "tuned"]
        assert all(columns.nth(i).locator(".text").inner_text().strip() for i in range(2))

        page.check("#blind")
        page.fill("#message", "Which city?")
        page.click("#send")
        page.wait_for_selector(".turn.complete >> nth=1", timeout=60_000)
        turn = page.locator(".turn").nth(1)
        assert [turn.locator(".who").nth(i).inner_text() for i in range(2)] == ["A", "B"]
        shown_a = turn.locator(".answer").first.locator(".text").inner_text()
        turn.get_by_role("button", name="A is better").click()
        page.wait_for_function("document.querySelectorAll('.turn')[1].querySelector('.verdict').textContent")
        revealed = turn.locator(".who").first.inner_text()  # "A (tuned)" or "A (base)"
        chosen = revealed[revealed.index("(") + 1:-1]
        assert turn.locator(".verdict").inner_text() == f"recorded: {chosen}"
        assert "1 choices recorded" in page.inner_text("#win-rate")
        browser.close()

    assert read_feedback(root / "eval" / "feedback.jsonl") == {3: chosen}
    pairs = export_pairs(root / "eval" / "feedback.db", tmp_path / "pairs.jsonl")
    assert pairs["pairs"] == 1 and json.loads((tmp_path / "pairs.jsonl").read_text())["chosen"] == shown_a.strip()
