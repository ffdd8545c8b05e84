"""The workbench's FastAPI app: server-rendered pages over the runs folder, Server-Sent Events for live
curves, and the same security posture as `serve` and the feedback page (Host check, token, CSRF:
`workbench/guard.py`). Uploads are capped and written only inside the runs folder; a run or file named
in a request is resolved and refused when it leaves the runs folder.

Routes, by what they do: pages.py (read-only pages, live metrics, downloads), actions.py (jobs on a
run), arena_routes.py (side-by-side chat and blind choices), newrun_routes.py (upload, preview, estimate,
launch); what they share is a `Workbench` (context.py).
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from domaintune.core.errors import DomaintuneError
from domaintune.workbench import actions, arena_routes, newrun_routes, pages
from domaintune.workbench.arena import Arena
from domaintune.workbench.context import Workbench
from domaintune.workbench.guard import check_bind, install_guard

DEFAULT_UPLOAD_CAP = 100 * 2**20


def create_app(runs: Path, host: str = "127.0.0.1", token: str | None = None, upload_cap: int = DEFAULT_UPLOAD_CAP,
               poll_seconds: float = 0.5, arena: Arena | None = None) -> FastAPI:
    runs = Path(runs).resolve()
    runs.mkdir(parents=True, exist_ok=True)
    bench = Workbench(runs, upload_cap, poll_seconds, arena or Arena())
    app = FastAPI(title="domaintune workbench", docs_url=None, redoc_url=None, openapi_url=None)
    install_guard(app, host, token)

    @app.exception_handler(DomaintuneError)
    async def user_error(request: Request, error: DomaintuneError):
        return PlainTextResponse(f"error: {error}", 400)

    for module in (pages, actions, arena_routes, newrun_routes):
        app.include_router(module.router(bench))
    return app


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
