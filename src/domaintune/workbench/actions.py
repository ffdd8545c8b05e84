"""The workbench's actions on a run: stop, resume, evaluate and export, each a background job
(`workbench/jobs.py`) started by a form post that carries the CSRF token."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse

from domaintune.config import ExportConfig
from domaintune.workbench import jobs
from domaintune.workbench.context import Workbench
from domaintune.workbench.runs import export_choices


def router(bench: Workbench) -> APIRouter:
    router = APIRouter()

    @router.post("/runs/{name}/stop")
    async def stop(name: str, request: Request):
        await bench.csrf.form(request)
        run = bench.run_of(name)
        if not jobs.stop(run.root):
            raise HTTPException(409, f"{name} is not running")
        return RedirectResponse(f"/runs/{name}", 303)

    @router.post("/runs/{name}/resume")
    async def resume(name: str, request: Request):
        await bench.csrf.form(request)
        run = bench.run_of(name)
        if jobs.is_running(run.root):
            raise HTTPException(409, f"{name} is running already")
        jobs.launch(run.root, resume=True)
        return RedirectResponse(f"/runs/{name}", 303)

    @router.post("/runs/{name}/evaluate")
    async def evaluate(name: str, request: Request):
        await bench.csrf.form(request)
        run = bench.idle_trained_run(name)
        jobs.launch(run.root, task="evaluate")
        return RedirectResponse(f"/runs/{name}", 303)

    @router.post("/runs/{name}/export")
    async def export(name: str, request: Request):
        """Export what the form ticks (adapter, merged, GGUF kinds) instead of the recipe's export section."""
        from pydantic import ValidationError

        form = await bench.csrf.form(request)
        run = bench.idle_trained_run(name)
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

    return router
