"""The workbench's read-only routes: the runs list, a run's page (data, curves, results, files), the
comparison of runs, a run's live metrics as Server-Sent Events, downloads and the static files."""
from __future__ import annotations

import asyncio
import json
from importlib import resources

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response, StreamingResponse

from domaintune.core.errors import DomaintuneError
from domaintune.storage.jsonl import read_json, read_jsonl
from domaintune.storage.rundir import RunDir
from domaintune.workbench import jobs
from domaintune.workbench.context import Workbench, duration
from domaintune.workbench.runs import export_choices, inside, list_runs, matches, rows_bars, summarise

STATIC = {"workbench.js": "text/javascript", "workbench.css": "text/css"}
PAGE_ROWS = 10


def router(bench: Workbench) -> APIRouter:
    router = APIRouter()

    @router.get("/static/{name}")
    def static(name: str):
        if name not in STATIC:
            raise HTTPException(404, "no such file")
        text = resources.files("domaintune.workbench").joinpath("static", name).read_text("utf-8")
        return Response(text, media_type=STATIC[name])

    @router.get("/", response_class=HTMLResponse)
    def runs_page(q: str = "", status: str = ""):
        summaries = [summarise(run) for run in list_runs(bench.runs)]
        shown = [summary for summary in summaries if matches(summary, q, status)]
        return bench.page("runs.html.j2", runs=shown, total=len(summaries), q=q, status=status,
                          statuses=sorted({summary.status for summary in summaries}), folder=bench.runs)

    @router.get("/runs/{name}", response_class=HTMLResponse)
    def run_page(name: str, split: str = "train", page_number: int = 0):
        from domaintune.evaluation.report_tables import comparison_rows, model_rank

        run = bench.run_of(name)
        if split not in ("train", "validation", "test"):
            raise HTTPException(400, f"split {split!r}: train, validation or test")
        results = run.results()
        models = dict(sorted((results.get("models") or {}).items(), key=lambda item: model_rank(item[0])))
        task_rows, fit_rows = comparison_rows(models, results.get("comparison") or {}) if models else ([], [])
        rows = run.read_split(split) if (run.data / f"{split}.jsonl").is_file() else []
        log = run.root / jobs.FOLDER / "job.log"
        card = read_json(run.data / "data_card.json", None)
        return bench.page(
            "run.html.j2", run=run, summary=summarise(run), recipe=run.recipe_file.read_text(encoding="utf-8"),
            card=card, bars=rows_bars(card) if card else [], rejected=read_jsonl(run.data / "rejected.jsonl")[:50],
            split=split, page_number=page_number, pages=max(1, -(-len(rows) // PAGE_ROWS)),
            split_rows=rows[page_number * PAGE_ROWS:(page_number + 1) * PAGE_ROWS], models=list(models),
            task_rows=task_rows, fit_rows=fit_rows, artefacts=_artefacts(run), export=_quietly(export_choices, run),
            log_tail=log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:] if log.is_file() else [],
        )

    @router.get("/compare", response_class=HTMLResponse)
    def compare(run: list[str] = Query(default=[])):
        """Two or more runs: `domaintune compare`'s table (with each metric's interval) and their loss curves."""
        from domaintune.workflows.compare import run_row

        chosen = [bench.run_of(name) for name in dict.fromkeys(run)]
        if len(chosen) < 2:
            raise HTTPException(400, "pick two or more runs to compare")
        rows = [run_row(item, item.root.name, summarise(item).method) for item in chosen]
        intervals = [(item.results().get("comparison") or {}) for item in chosen]
        base = next(((item.results().get("models") or {}).get("base") for item in chosen
                     if (item.results().get("models") or {}).get("base")), None)
        curves = {item.root.name: [[r["step"], r["loss"]] for r in read_jsonl(item.metrics) if "loss" in r and "step" in r]
                  for item in chosen}
        return bench.page("compare.html.j2", rows=rows, intervals=intervals, base=base, curves=json.dumps(curves),
                          metric_names=sorted({name for row in rows for name in row["metrics"]}))

    @router.get("/runs/{name}/events")
    async def events(name: str, request: Request):
        """The run's metrics.jsonl lines as `metric` events (the id is the byte offset read up to, so a
        reconnect resumes where it stopped) and its status as `status` events; `end` once it is over."""
        run = bench.run_of(name)
        try:
            offset = max(0, int(request.headers.get("last-event-id") or 0))
        except ValueError:
            offset = 0

        async def stream():
            nonlocal offset
            yield "retry: 1000\n\n"
            last_status = None
            while not await request.is_disconnected():
                summary = summarise(run)
                size = run.metrics.stat().st_size if run.metrics.is_file() else 0
                # A resumed run rewrote the log from its checkpoint: shorter now, or the id lands mid-line.
                if size < offset or (size > offset and not _line_starts_at(run.metrics, offset)):
                    offset = 0
                    yield "event: reset\ndata: {}\n\n"
                if size > offset:
                    with run.metrics.open("rb") as handle:
                        handle.seek(offset)
                        chunk = handle.read(size - offset)
                    # Split on b"\n" only (a line still being written waits): str.splitlines would also cut at
                    # U+2028 inside a line, and the offset would no longer be a line start.
                    for line in chunk.split(b"\n")[:-1]:
                        offset += len(line) + 1
                        if line.strip():
                            yield f"id: {offset}\nevent: metric\ndata: {line.decode('utf-8')}\n\n"
                status = json.dumps(_status_fields(summary))
                if status != last_status:
                    last_status = status
                    yield f"event: status\ndata: {status}\n\n"
                if not summary.running:
                    yield "event: end\ndata: {}\n\n"
                    return
                await asyncio.sleep(bench.poll_seconds)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @router.get("/runs/{name}/files/{path:path}")
    def download(name: str, path: str):
        run = bench.run_of(name)
        try:
            target = inside(run.root, path)
        except DomaintuneError as error:
            raise HTTPException(403, str(error)) from None
        if not target.is_file():
            raise HTTPException(404, f"{path}: no such file in the run")
        inline = target.suffix in (".html", ".json", ".jsonl", ".log", ".yaml", ".md", ".txt")
        # A sandboxed page has an origin of its own: a run's HTML (which shows data rows) can't act as the app.
        return FileResponse(target, filename=None if inline else target.name,
                            headers={"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"})

    return router


def _quietly(function, run: RunDir):
    """function(run), or None where the run's recipe no longer validates: the page still shows the run."""
    try:
        return function(run)
    except DomaintuneError:
        return None


def _line_starts_at(path, offset: int) -> bool:
    """Whether a line of the file starts at byte `offset` (every id the stream sends does)."""
    if offset == 0:
        return True
    with path.open("rb") as handle:
        handle.seek(offset - 1)
        return handle.read(1) == b"\n"


def _status_fields(summary) -> dict:
    return {"status": summary.status, "error": summary.error, "step": summary.step, "total": summary.total,
            "eta": duration(summary.eta_seconds) if summary.eta_seconds is not None else None,
            "running": summary.running}


def _artefacts(run: RunDir) -> list[dict]:
    """The files a run produced that people download: the report, the model, exports, evaluation, data."""
    found = []
    for folder in (run.root, run.model, run.export, run.eval, run.data):
        if not folder.is_dir():
            continue
        files = [run.report] if folder == run.root and run.report.is_file() else []
        if folder != run.root:
            files = sorted(path for path in folder.rglob("*") if path.is_file())
        found += [{"path": path.relative_to(run.root).as_posix(), "bytes": path.stat().st_size} for path in files[:200]]
    return found
