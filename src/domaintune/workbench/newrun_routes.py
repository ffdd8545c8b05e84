"""The workbench's new-run flow: upload a data file (capped, kept inside the runs folder), preview it
with a starting recipe, estimate the recipe's time in the background, and launch it as a run."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from domaintune.config import ModelConfig
from domaintune.core.errors import DomaintuneError
from domaintune.core.local_pages import read_body
from domaintune.storage.rundir import RunDir
from domaintune.workbench import jobs
from domaintune.workbench.context import Workbench


def router(bench: Workbench) -> APIRouter:
    router = APIRouter()

    @router.post("/upload")
    async def upload(request: Request, name: str):
        bench.csrf.check(request.headers.get("x-csrf-token"))
        body = await read_body(request, bench.upload_cap,
                               f"{name}: larger than the upload cap of {bench.upload_cap:,} bytes")
        from domaintune.workbench.newrun import save_upload

        try:
            saved = save_upload(bench.runs, name, [body], bench.upload_cap)
        except DomaintuneError as error:
            raise HTTPException(400, str(error)) from None
        return JSONResponse({"file": saved.relative_to(bench.runs).as_posix()})

    def new_page(data: str, model: str, fmt: str, columns: str, recipe: str | None = None,
                 problems: list | None = None, code: int = 200) -> HTMLResponse:
        # Imported here: the data pipeline and the registries pull in torch, which the app's start must not wait for.
        from domaintune.methods import METHODS
        from domaintune.objectives import OBJECTIVES
        from domaintune.workbench import newrun

        preview, error = None, None
        if data:
            try:
                preview = newrun.preview(bench.runs, data, fmt, newrun.parse_columns(columns), model)
            except DomaintuneError as problem:
                error = str(problem)
        if recipe is None and data:
            recipe = newrun.starting_recipe(data, model, fmt, newrun.parse_columns(columns) if not error else {})
        uploads = sorted((path.relative_to(bench.runs).as_posix() for path in (bench.runs / newrun.UPLOADS).glob("*")
                          if path.is_file()), reverse=True) if (bench.runs / newrun.UPLOADS).is_dir() else []
        return bench.page("new.html.j2", code, data=data, model=model, fmt=fmt, columns=columns, preview=preview,
                          error=error, recipe=recipe or "", problems=problems or [], uploads=uploads,
                          methods={name: module.SUMMARY for name, module in METHODS.items()},
                          objectives={name: module.SUMMARY for name, module in OBJECTIVES.items()})

    @router.get("/new", response_class=HTMLResponse)
    def new(data: str = "", model: str = ModelConfig().name, format: str = "auto", columns: str = ""):
        return new_page(data, model, format, columns)

    @router.post("/estimate")
    async def estimate(request: Request):
        """`domaintune estimate` on the recipe being edited, started in the background; poll the answer's URL."""
        form = await bench.csrf.form(request)
        from domaintune.workbench.newrun import check_recipe

        recipe, problems = check_recipe(bench.runs, form.get("recipe", ""))
        if recipe is None:
            return JSONResponse({"problems": problems}, 400)
        try:
            ident = bench.estimates.start(recipe)
        except DomaintuneError as error:
            raise HTTPException(409, str(error)) from None
        return JSONResponse({"poll": f"/estimate/{ident}"}, 202)

    @router.get("/estimate/{ident}")
    def estimate_state(ident: str):
        state = bench.estimates.state(ident)
        if state is None:
            raise HTTPException(404, "no such estimate (the app restarted?): press Estimate again")
        return JSONResponse(state, headers={"Cache-Control": "no-store"})

    @router.post("/launch")
    async def launch(request: Request):
        form = await bench.csrf.form(request)
        from domaintune.workbench.newrun import check_recipe

        text = form.get("recipe", "")
        recipe, problems = check_recipe(bench.runs, text)
        if recipe is None:
            return new_page(form.get("data", ""), form.get("model") or ModelConfig().name, form.get("format", "auto"),
                            form.get("columns", ""), recipe=text, problems=problems, code=400)
        run = RunDir.create(recipe)
        jobs.launch(run.root)
        return RedirectResponse(f"/runs/{run.root.name}", 303)

    return router
