"""The run page's Evaluate and Export buttons: detached jobs like launch and resume, offering only the
exports the run allows, refusing a run that is running or not trained, and posts without the page token."""
import json
import re
import time

from conftest import make_trained_run
from fastapi.testclient import TestClient

from domaintune.workbench import jobs
from domaintune.workbench.app import create_app


def client(runs):
    web = TestClient(create_app(runs), base_url="http://127.0.0.1:7860", follow_redirects=False)
    return web, re.search(r'name="csrf" content="([^"]+)"', web.get("/").text).group(1)


def wait_for_job(root, seconds=120):
    deadline = time.monotonic() + seconds
    while jobs.is_running(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    return jobs.job_files(root)


def test_export_writes_what_the_form_ticks_and_only_what_the_run_allows(tmp_path, tiny_model_dir):
    runs = tmp_path / "runs"
    root = make_trained_run(runs, tiny_model_dir)
    web, token = client(runs)
    form = re.search(r'<form method="post" action="/runs/[^"]+/export" id="export-form">(.*?)</form>',
                     web.get(f"/runs/{root.name}").text, re.S).group(1)
    assert 'name="merged"' in form and 'name="adapter"' not in form  # full weights: no adapter to export
    assert web.post(f"/runs/{root.name}/export", data={"merged": "on"}).status_code == 403
    refused = web.post(f"/runs/{root.name}/export", data={"csrf": token, "adapter": "on"})
    assert refused.status_code == 400 and "not an adapter" in refused.json()["detail"]
    refused = web.post(f"/runs/{root.name}/export", data={"csrf": token, "merged": "on", "gguf": "q9_9"})
    assert refused.status_code == 400 and "gguf q9_9" in refused.json()["detail"]
    assert not (root / "workbench").exists()  # nothing launched

    response = web.post(f"/runs/{root.name}/export", data={"csrf": token, "merged": "on", "dtype": "float32"})
    assert response.status_code == 303
    job, _ = jobs.job_files(root)
    assert job["task"] == "export"
    # A second job while this one runs is refused.
    assert web.post(f"/runs/{root.name}/evaluate", data={"csrf": token}).status_code == 409
    _, result = wait_for_job(root)
    assert result["state"] == "done", (root / "workbench" / "job.log").read_text()
    config = json.loads((root / "export" / "merged" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "float32"
    assert "export/merged/config.json" in web.get(f"/runs/{root.name}").text


def test_evaluate_runs_as_a_job_and_the_page_shows_its_results(tmp_path, tiny_model_dir):
    runs = tmp_path / "runs"
    root = make_trained_run(runs, tiny_model_dir)
    web, token = client(runs)
    assert "Not evaluated yet" in web.get(f"/runs/{root.name}").text
    assert web.post(f"/runs/{root.name}/evaluate", data={}).status_code == 403
    assert web.post(f"/runs/{root.name}/evaluate", data={"csrf": token}).status_code == 303
    assert jobs.job_files(root)[0]["task"] == "evaluate"
    _, result = wait_for_job(root)
    assert result["state"] == "done", (root / "workbench" / "job.log").read_text()
    page = web.get(f"/runs/{root.name}").text
    assert re.search(r'id="status" class="status done">done<', page)
    assert "exact_match" in re.search(r'<table id="evaluation">(.*?)</table>', page, re.S).group(1)
    assert "Evaluate again" in page
    (root / "model" / "training.json").unlink()
    untrained = web.post(f"/runs/{root.name}/evaluate", data={"csrf": token})
    assert untrained.status_code == 409 and "not trained" in untrained.json()["detail"]
