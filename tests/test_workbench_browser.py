"""The workbench in a real headless Chromium on a tiny model: upload a file with one bad row and see its
line and reason before anything trains, launch the run from the page, watch the step counter and the
loss update live (Server-Sent Events), and open the finished run's evaluation; chat in the arena with
both answers streamed and a blind preference recorded in the run's feedback store."""
import contextlib
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
        # The latest line keeps the last training loss when a validation record (no training loss) arrives.
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


@contextlib.contextmanager
def stopped_at_the_end(root):
    """A job left running by a failing test would train on for minutes: stop it whatever happens."""
    from domaintune.workbench import jobs

    try:
        yield
    finally:
        jobs.stop(root)


def test_stop_a_training_run_and_resume_it_from_the_page(tmp_path, tiny_recipe):
    from playwright.sync_api import sync_playwright

    from domaintune.api import load
    from domaintune.storage.rundir import RunDir
    from domaintune.workbench import jobs

    runs = tmp_path / "runs"
    recipe = {**tiny_recipe, "name": "stoppable", "evaluation": {**tiny_recipe["evaluation"], "max_samples": 2}}
    recipe["training"] = {**recipe["training"], "max_steps": 400, "save_every": 3, "log_every": 1, "eval_every": 400}
    run = RunDir.create(load(recipe))
    jobs.launch(run.root)
    step_shown = "Number((document.getElementById('progress').textContent.match(/step (\\d+)/) || [0, 0])[1])"
    with (live_server(create_app(runs, poll_seconds=0.2), free_port()) as url, sync_playwright() as playwright,
          stopped_at_the_end(run.root)):
        browser, page = browser_page(playwright)
        page.goto(f"{url}/runs/{run.root.name}")
        page.wait_for_function(f"{step_shown} >= 5", timeout=90_000)  # past the checkpoint at step 3
        page.click("#stop")
        page.wait_for_function("document.getElementById('status').textContent === 'stopped'", timeout=60_000)
        assert page.is_enabled("#resume") and page.is_disabled("#stop")
        checkpoint = run.last_checkpoint()
        assert checkpoint is not None
        stopped_at = int(checkpoint.name.rsplit("-", 1)[1])

        page.click("#resume")
        page.wait_for_function("document.getElementById('status').textContent === 'training'", timeout=60_000)
        # The resumed run goes on from its checkpoint, past where it stopped, shown live on the same page
        # (the steps the page receives now, not the ones it was rendered with).
        page.evaluate(f"""() => {{ window.steps = [];
            new MutationObserver(() => steps.push({step_shown}))
              .observe(document.getElementById('progress'), {{childList: true, characterData: true, subtree: true}}); }}""")
        page.wait_for_function(f"new Set(window.steps).size >= 2 && Math.max(...window.steps) > {stopped_at + 2}",
                               timeout=90_000)
        assert jobs.job_files(run.root)[0]["resume"] is True
        page.click("#stop")  # not to wait for 400 steps
        page.wait_for_function("document.getElementById('status').textContent === 'stopped'", timeout=90_000)
        browser.close()
    assert f"Resuming from checkpoint-{stopped_at}" in (run.root / "workbench" / "job.log").read_text()


def test_compare_two_runs_from_the_runs_page(tmp_path):
    from playwright.sync_api import sync_playwright
    from test_workbench_pages import RESULTS, make_run

    runs = tmp_path / "runs"
    make_run(runs, "lora-run", results=RESULTS, metrics=[{"step": s, "loss": 2.0 / s} for s in range(1, 6)])
    make_run(runs, "ia3-run", method="ia3", results=RESULTS, metrics=[{"step": s, "loss": 3.0 / s} for s in range(1, 6)])
    make_run(runs, "other", results=RESULTS, age=50)
    with live_server(create_app(runs), free_port()) as url, sync_playwright() as playwright:
        browser, page = browser_page(playwright)
        page.goto(url)
        page.check("input[name=run][value=lora-run]")
        page.check("input[name=run][value=ia3-run]")
        page.click("#compare")
        page.wait_for_selector("#comparison")
        assert page.inner_text("h1") == "Compare 2 runs"
        table = page.inner_text("#comparison")
        assert "lora-run" in table and "ia3-run" in table and "other" not in table
        assert "[+0.300, +0.700]" in table and "better" in table
        # Both loss curves are drawn in their own colours on the chart.
        colours = page.evaluate("""() => { const c = document.getElementById('chart-compare');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data, seen = new Set();
            for (let i = 0; i < d.length; i += 4) if (d[i + 3] && !(d[i] === d[i + 1] && d[i + 1] === d[i + 2]))
              seen.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]);
            return [...seen]; }""")
        assert {"47,111,222", "232,116,59"} <= set(colours)  # COLOURS[0] and COLOURS[1] in workbench.js
        browser.close()
