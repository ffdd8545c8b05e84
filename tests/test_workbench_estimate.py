"""The new-run page's estimate: `domaintune estimate` on the recipe being edited, in the background (the
page polls for it), behind the CSRF token, with a recipe's mistakes refused at their field."""
import re
import tempfile
import time

import yaml
from conftest import write_jsonl
from fastapi.testclient import TestClient

from domaintune.workbench.app import create_app


def test_estimate_runs_in_the_background_and_shows_the_forecast(tmp_path, tiny_recipe, qa_rows, monkeypatch):
    scratch = tmp_path / "scratch"  # where the estimate prepares its data: each press must leave nothing there
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    runs = tmp_path / "runs"
    (runs / "uploads").mkdir(parents=True)
    write_jsonl(runs / "uploads" / "offices.jsonl", qa_rows)
    web = TestClient(create_app(runs), base_url="http://127.0.0.1:7860")
    page = web.get("/new", params={"data": "uploads/offices.jsonl", "model": tiny_recipe["model"]["name"]}).text
    assert 'id="estimate-button"' in page
    token = re.search(r'name="csrf" content="([^"]+)"', page).group(1)
    recipe = yaml.safe_dump({**tiny_recipe, "data": {**tiny_recipe["data"], "train": ["uploads/offices.jsonl"]}})

    assert web.post("/estimate", data={"recipe": recipe}).status_code == 403  # no CSRF token
    bad = web.post("/estimate", data={"csrf": token, "recipe": recipe.replace("lr: 0.02", "lr: fast")})
    assert bad.status_code == 400 and any(item["field"] == "training.lr" for item in bad.json()["problems"])

    started = web.post("/estimate", data={"csrf": token, "recipe": recipe})
    assert started.status_code == 202
    poll = started.json()["poll"]
    deadline = time.monotonic() + 180
    while not (state := web.get(poll).json())["done"]:
        assert time.monotonic() < deadline, state
        time.sleep(0.5)
    assert state["error"] is None, state
    assert "Estimate: 12 steps" in state["text"] and "for the whole run" in state["text"]
    assert web.get("/estimate/nope").status_code == 404
    assert not list(runs.glob("tiny-*")), "an estimate must not leave a run in the runs folder"
    assert not list(scratch.glob("domaintune-estimate-*")), "an estimate must remove its scratch data"


def test_an_app_stopped_mid_estimate_lets_it_clean_up(tmp_path):
    """The estimate's scratch (a prepared copy of the user's data) is removed even when the app exits first."""
    import subprocess
    import sys
    import textwrap

    scratch = tmp_path / "scratch"
    script = textwrap.dedent(f"""
        import pathlib, time
        from domaintune import api
        from domaintune.workbench.newrun import Estimates

        def estimate(recipe, console):
            folder = pathlib.Path({str(scratch)!r})
            folder.mkdir()
            try:
                time.sleep(1)
            finally:
                folder.rmdir()

        api.estimate = estimate
        Estimates().start(None)
        time.sleep(0.3)  # the app's main thread ends here, mid-estimate
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert not scratch.exists()
