"""The workbench's FastAPI app: server-rendered pages over the runs folder, Server-Sent Events for live
curves, and the same security posture as `serve` and the feedback page (Host check, token, CSRF:
`workbench/guard.py`). Uploads are capped and written only inside the runs folder; a run or file named
in a request is resolved and refused when it leaves the runs folder.
"""
from __future__ import annotations

import asyncio
import functools
import json
from importlib import resources
from pathlib import Path

import jinja2
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from domaintune.config import EvaluationConfig, ExportConfig, ModelConfig
from domaintune.core.errors import DomaintuneError
from domaintune.core.local_pages import PageToken
from domaintune.storage.jsonl import read_json, read_jsonl
from domaintune.storage.rundir import RunDir
from domaintune.workbench import jobs
from domaintune.workbench.arena import MAX_MESSAGE_CHARS, Arena
from domaintune.workbench.guard import check_bind, install_guard
from domaintune.workbench.runs import (
    export_choices,
    inside,
    list_runs,
    matches,
    name_of,
    open_run,
    raw_recipe,
    rows_bars,
    summarise,
)

DEFAULT_UPLOAD_CAP = 100 * 2**20
CHAT_BODY_CAP = 64 * 2**10
STATIC = {"workbench.js": "text/javascript", "workbench.css": "text/css"}
PAGE_ROWS = 10


def _templates() -> jinja2.Environment:
    folder = resources.files("domaintune.workbench").joinpath("templates")
    # Autoescape: file contents, rows, errors and model answers are untrusted text and must not become markup.
    environment = jinja2.Environment(loader=jinja2.FunctionLoader(lambda name: folder.joinpath(name).read_text("utf-8")),
                                     autoescape=True, trim_blocks=True, lstrip_blocks=True)
    environment.filters["duration"] = _duration
    environment.filters["number"] = lambda value, digits=3: "–" if value is None else f"{value:.{digits}f}"
    return environment


def _duration(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def create_app(runs: Path, host: str = "127.0.0.1", token: str | None = None, upload_cap: int = DEFAULT_UPLOAD_CAP,
               poll_seconds: float = 0.5, arena: Arena | None = None) -> FastAPI:
    runs = Path(runs).resolve()
    runs.mkdir(parents=True, exist_ok=True)
    templates = _templates()
    arena = arena or Arena()
    app = FastAPI(title="domaintune workbench", docs_url=None, redoc_url=None, openapi_url=None)
    install_guard(app, host, token)
    csrf = PageToken()

    def page(template: str, code: int = 200, **values) -> HTMLResponse:
        return HTMLResponse(templates.get_template(template).render(csrf=csrf.value, **values), code)

    @functools.cache
    def estimates():
        # Made on first use: newrun imports the data pipeline (torch), which the app's start must not wait for.
        from domaintune.workbench.newrun import Estimates

        return Estimates()

    def run_of(name: str) -> RunDir:
        try:
            return open_run(runs, name)
        except DomaintuneError as error:
            raise HTTPException(404, str(error)) from None

    def idle_trained_run(name: str) -> RunDir:
        """A run a job may start on: trained, and no job of it running."""
        run = run_of(name)
        if jobs.is_running(run.root):
            raise HTTPException(409, f"{name} is running; wait for it or stop it first")
        if not (run.model / "training.json").is_file():
            raise HTTPException(409, f"{name} has not trained yet")
        return run

    @app.exception_handler(DomaintuneError)
    async def user_error(request: Request, error: DomaintuneError):
        return PlainTextResponse(f"error: {error}", 400)

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC:
            raise HTTPException(404, "no such file")
        text = resources.files("domaintune.workbench").joinpath("static", name).read_text("utf-8")
        return Response(text, media_type=STATIC[name])

    @app.get("/", response_class=HTMLResponse)
    def runs_page(q: str = "", status: str = ""):
        summaries = [summarise(run) for run in list_runs(runs)]
        shown = [summary for summary in summaries if matches(summary, q, status)]
        return page("runs.html.j2", runs=shown, total=len(summaries), q=q, status=status,
                    statuses=sorted({summary.status for summary in summaries}), folder=runs)

    @app.get("/runs/{name}", response_class=HTMLResponse)
    def run_page(name: str, split: str = "train", page_number: int = 0):
        from domaintune.evaluation.report_tables import comparison_rows, model_rank

        run = run_of(name)
        if split not in ("train", "validation", "test"):
            raise HTTPException(400, f"split {split!r}: train, validation or test")
        results = run.results()
        models = dict(sorted((results.get("models") or {}).items(), key=lambda item: model_rank(item[0])))
        task_rows, fit_rows = comparison_rows(models, results.get("comparison") or {}) if models else ([], [])
        rows = run.read_split(split) if (run.data / f"{split}.jsonl").is_file() else []
        log = run.root / jobs.FOLDER / "job.log"
        card = read_json(run.data / "data_card.json", None)
        return page(
            "run.html.j2", run=run, summary=summarise(run), recipe=run.recipe_file.read_text(encoding="utf-8"),
            card=card, bars=rows_bars(card) if card else [], rejected=read_jsonl(run.data / "rejected.jsonl")[:50],
            split=split, page_number=page_number, pages=max(1, -(-len(rows) // PAGE_ROWS)),
            split_rows=rows[page_number * PAGE_ROWS:(page_number + 1) * PAGE_ROWS], models=list(models),
            task_rows=task_rows, fit_rows=fit_rows, artefacts=_artefacts(run), export=_quietly(export_choices, run),
            log_tail=log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:] if log.is_file() else [],
        )

    @app.get("/compare", response_class=HTMLResponse)
    def compare(run: list[str] = Query(default=[])):
        """Two or more runs: `domaintune compare`'s table (with each metric's interval) and their loss curves."""
        from domaintune.workflows.compare import run_row

        chosen = [run_of(name) for name in dict.fromkeys(run)]
        if len(chosen) < 2:
            raise HTTPException(400, "pick two or more runs to compare")
        rows = [run_row(item, item.root.name, summarise(item).method) for item in chosen]
        intervals = [(item.results().get("comparison") or {}) for item in chosen]
        base = next(((item.results().get("models") or {}).get("base") for item in chosen
                     if (item.results().get("models") or {}).get("base")), None)
        curves = {item.root.name: [[r["step"], r["loss"]] for r in read_jsonl(item.metrics) if "loss" in r and "step" in r]
                  for item in chosen}
        return page("compare.html.j2", rows=rows, intervals=intervals, base=base, curves=json.dumps(curves),
                    metric_names=sorted({name for row in rows for name in row["metrics"]}))

    @app.get("/runs/{name}/events")
    async def events(name: str, request: Request):
        """The run's metrics.jsonl lines as `metric` events (the id is the byte offset read up to, so a
        reconnect resumes where it stopped) and its status as `status` events; `end` once it is over."""
        run = run_of(name)
        try:
            offset = int(request.headers.get("last-event-id") or 0)
        except ValueError:
            offset = 0

        async def stream():
            nonlocal offset
            yield "retry: 1000\n\n"
            last_status = None
            while not await request.is_disconnected():
                summary = summarise(run)
                size = run.metrics.stat().st_size if run.metrics.is_file() else 0
                if size < offset:  # a resumed run rewrote the log from its checkpoint
                    offset = 0
                    yield "event: reset\ndata: {}\n\n"
                if size > offset:
                    with run.metrics.open("rb") as handle:
                        handle.seek(offset)
                        chunk = handle.read(size - offset)
                    complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written waits
                    for line in complete.decode("utf-8").splitlines():
                        offset += len(line.encode("utf-8")) + 1
                        if line.strip():
                            yield f"id: {offset}\nevent: metric\ndata: {line}\n\n"
                status = json.dumps(_status_fields(summary))
                if status != last_status:
                    last_status = status
                    yield f"event: status\ndata: {status}\n\n"
                if not summary.running:
                    yield "event: end\ndata: {}\n\n"
                    return
                await asyncio.sleep(poll_seconds)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @app.get("/runs/{name}/files/{path:path}")
    def download(name: str, path: str):
        run = run_of(name)
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

    @app.post("/runs/{name}/stop")
    async def stop(name: str, request: Request):
        await csrf.form(request)
        run = run_of(name)
        if not jobs.stop(run.root):
            raise HTTPException(409, f"{name} is not running")
        return RedirectResponse(f"/runs/{name}", 303)

    @app.post("/runs/{name}/resume")
    async def resume(name: str, request: Request):
        await csrf.form(request)
        run = run_of(name)
        if jobs.is_running(run.root):
            raise HTTPException(409, f"{name} is running already")
        jobs.launch(run.root, resume=True)
        return RedirectResponse(f"/runs/{name}", 303)

    @app.post("/runs/{name}/evaluate")
    async def evaluate(name: str, request: Request):
        await csrf.form(request)
        run = idle_trained_run(name)
        jobs.launch(run.root, task="evaluate")
        return RedirectResponse(f"/runs/{name}", 303)

    @app.post("/runs/{name}/export")
    async def export(name: str, request: Request):
        """Export what the form ticks (adapter, merged, GGUF kinds) instead of the recipe's export section."""
        from pydantic import ValidationError

        form = await csrf.form(request)
        run = idle_trained_run(name)
        choices = export_choices(run)
        if choices["own"]:
            jobs.launch(run.root, task="export")
            return RedirectResponse(f"/runs/{name}", 303)
        wanted = {"adapter": form.get("adapter") == "on", "merged": form.get("merged") == "on",
                  "gguf": [kind for kind in form.get("gguf", "").split(",") if kind]}
        refused = [f"{what}: {why}" for what, allowed, why in (
            ("adapter", choices["adapter"], "this run's method trains full weights, not an adapter"),
            ("merged", choices["merged"], choices["blocker"]),
        ) if wanted[what] and not allowed]
        refused += [f"gguf {kind}: {choices['gguf_missing'] or 'not available for this run'}"
                    for kind in wanted["gguf"] if kind not in choices["gguf"]]
        if not (wanted["adapter"] or wanted["merged"]):
            refused.append("tick the adapter or the merged model")
        try:
            section = ExportConfig(**wanted, dtype=form.get("dtype") or choices["dtype"])
        except ValidationError as error:
            refused += [f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}" for problem in error.errors()]
        if refused:
            raise HTTPException(400, "; ".join(refused))
        jobs.launch(run.root, task="export", export=section.model_dump())
        return RedirectResponse(f"/runs/{name}", 303)

    @app.get("/runs/{name}/arena", response_class=HTMLResponse)
    def arena_page(name: str):
        run = run_of(name)
        recipe = raw_recipe(run)
        evaluation = recipe.get("evaluation") if isinstance(recipe.get("evaluation"), dict) else {}
        return page("arena.html.j2", summary=summarise(run), trained=(run.model / "training.json").is_file(),
                    base=name_of(recipe.get("model")), max_chars=MAX_MESSAGE_CHARS,
                    max_new_tokens=evaluation.get("max_new_tokens", EvaluationConfig().max_new_tokens))

    @app.post("/runs/{name}/arena/chat")
    async def arena_chat(name: str, request: Request):
        """Both answers to a message as server-sent events (read by fetch: a POST, so it carries the CSRF token)."""
        csrf.check(request.headers.get("x-csrf-token"))
        body = await request.body()
        if len(body) > CHAT_BODY_CAP:
            raise HTTPException(413, f"request larger than {CHAT_BODY_CAP:,} bytes")
        run = run_of(name)
        try:
            asked = json.loads(body)
            stream = arena.chat(run, str(asked.get("conversation") or ""), str(asked["message"]),
                                bool(asked.get("blind")), int(asked.get("max_new_tokens") or 128))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise HTTPException(400, f"bad request: expected JSON with a message ({error})") from None
        except DomaintuneError as error:
            raise HTTPException(400, str(error)) from None
        return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @app.post("/runs/{name}/arena/choose")
    async def arena_choose(name: str, request: Request):
        """A blind choice into the run's feedback store, as the feedback page records it; reveals who was who."""
        from domaintune.api import feedback_db
        from domaintune.evaluation.feedback import item_view, read_choice, record_choice, session_summary

        form = await csrf.form(request)
        db = feedback_db(run_of(name).root)
        try:
            item, slot, ratings = read_choice(form)
            if not db.is_file():
                raise DomaintuneError("no blind answers recorded for this run yet")
            record_choice(db, item, slot, ratings)
        except (DomaintuneError, KeyError, ValueError) as error:
            raise HTTPException(400, f"bad choice: {error}") from None
        shown = item_view(db, item)
        return JSONResponse({"sources": {answer["letter"]: answer["source"] for answer in shown["answers"]},
                             "choice": shown["previous"], "summary": session_summary(db)})

    @app.post("/upload")
    async def upload(request: Request, name: str):
        csrf.check(request.headers.get("x-csrf-token"))
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > upload_cap:
            raise HTTPException(413, f"{name}: larger than the upload cap of {upload_cap:,} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > upload_cap:  # a body without a length, or longer than it said
                raise HTTPException(413, f"{name}: larger than the upload cap of {upload_cap:,} bytes")
            chunks.append(chunk)
        from domaintune.workbench.newrun import save_upload

        try:
            saved = save_upload(runs, name, chunks, upload_cap)
        except DomaintuneError as error:
            raise HTTPException(400, str(error)) from None
        return JSONResponse({"file": saved.relative_to(runs).as_posix()})

    def new_page(data: str, model: str, fmt: str, columns: str, recipe: str | None = None,
                 problems: list | None = None, code: int = 200) -> HTMLResponse:
        # Imported here: the data pipeline and the registries pull in torch, which the app's start must not wait for.
        from domaintune.methods import METHODS
        from domaintune.objectives import OBJECTIVES
        from domaintune.workbench import newrun

        preview, error = None, None
        if data:
            try:
                preview = newrun.preview(runs, data, fmt, newrun.parse_columns(columns), model)
            except DomaintuneError as problem:
                error = str(problem)
        if recipe is None and data:
            recipe = newrun.starting_recipe(data, model, fmt, newrun.parse_columns(columns) if not error else {})
        uploads = sorted((path.relative_to(runs).as_posix() for path in (runs / newrun.UPLOADS).glob("*")
                          if path.is_file()), reverse=True) if (runs / newrun.UPLOADS).is_dir() else []
        return page("new.html.j2", code, data=data, model=model, fmt=fmt, columns=columns, preview=preview,
                    error=error, recipe=recipe or "", problems=problems or [], uploads=uploads,
                    methods={name: module.SUMMARY for name, module in METHODS.items()},
                    objectives={name: module.SUMMARY for name, module in OBJECTIVES.items()})

    @app.get("/new", response_class=HTMLResponse)
    def new(data: str = "", model: str = ModelConfig().name, format: str = "auto", columns: str = ""):
        return new_page(data, model, format, columns)

    @app.post("/estimate")
    async def estimate(request: Request):
        """`domaintune estimate` on the recipe being edited, started in the background; poll the answer's URL."""
        form = await csrf.form(request)
        from domaintune.workbench.newrun import check_recipe

        recipe, problems = check_recipe(runs, form.get("recipe", ""))
        if recipe is None:
            return JSONResponse({"problems": problems}, 400)
        try:
            ident = estimates().start(recipe)
        except DomaintuneError as error:
            raise HTTPException(409, str(error)) from None
        return JSONResponse({"poll": f"/estimate/{ident}"}, 202)

    @app.get("/estimate/{ident}")
    def estimate_state(ident: str):
        state = estimates().state(ident)
        if state is None:
            raise HTTPException(404, "no such estimate (the app restarted?): press Estimate again")
        return JSONResponse(state, headers={"Cache-Control": "no-store"})

    @app.post("/launch")
    async def launch(request: Request):
        form = await csrf.form(request)
        from domaintune.workbench.newrun import check_recipe

        text = form.get("recipe", "")
        recipe, problems = check_recipe(runs, text)
        if recipe is None:
            return new_page(form.get("data", ""), form.get("model") or ModelConfig().name, form.get("format", "auto"),
                            form.get("columns", ""), recipe=text, problems=problems, code=400)
        run = RunDir.create(recipe)
        jobs.launch(run.root)
        return RedirectResponse(f"/runs/{run.root.name}", 303)

    return app


def _quietly(function, run: RunDir):
    """function(run), or None where the run's recipe no longer validates: the page still shows the run."""
    try:
        return function(run)
    except DomaintuneError:
        return None


def _status_fields(summary) -> dict:
    return {"status": summary.status, "error": summary.error, "step": summary.step, "total": summary.total,
            "eta": _duration(summary.eta_seconds) if summary.eta_seconds is not None else None,
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


def serve(runs: Path, host: str = "127.0.0.1", port: int = 7860, token: str | None = None,
          upload_cap: int = DEFAULT_UPLOAD_CAP, console=None) -> None:
    import uvicorn

    check_bind(host, token)
    app = create_app(runs, host=host, token=token, upload_cap=upload_cap)
    shown = f"[{host}]" if ":" in host else host
    if console is not None:
        console.print(f"Workbench: http://{shown}:{port}/{f'?token={token}' if token else ''} (runs in {Path(runs).resolve()}); "
                      "stop with Ctrl+C (runs it launched keep running)", highlight=False, soft_wrap=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
