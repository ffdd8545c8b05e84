"""What every route of the workbench shares: the runs folder, the page templates, the CSRF token, and
the lookups that turn a run's name from a URL into its folder (refused when it leaves the runs folder)."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import jinja2
from fastapi import HTTPException
from fastapi.responses import HTMLResponse

from domaintune.core.errors import DomaintuneError
from domaintune.core.local_pages import PageToken
from domaintune.storage.rundir import RunDir
from domaintune.workbench import jobs
from domaintune.workbench.arena import Arena
from domaintune.workbench.runs import open_run


def templates() -> jinja2.Environment:
    folder = resources.files("domaintune.workbench").joinpath("templates")
    # Autoescape: file contents, rows, errors and model answers are untrusted text and must not become markup.
    environment = jinja2.Environment(loader=jinja2.FunctionLoader(lambda name: folder.joinpath(name).read_text("utf-8")),
                                     autoescape=True, trim_blocks=True, lstrip_blocks=True)
    environment.filters["duration"] = duration
    environment.filters["number"] = lambda value, digits=3: "–" if value is None else f"{value:.{digits}f}"
    return environment


def duration(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


@dataclass
class Workbench:
    runs: Path
    upload_cap: int
    poll_seconds: float
    arena: Arena
    csrf: PageToken = field(default_factory=PageToken)
    environment: jinja2.Environment = field(default_factory=templates)

    def page(self, template: str, code: int = 200, **values) -> HTMLResponse:
        return HTMLResponse(self.environment.get_template(template).render(csrf=self.csrf.value, **values), code)

    def run_of(self, name: str) -> RunDir:
        try:
            return open_run(self.runs, name)
        except DomaintuneError as error:
            raise HTTPException(404, str(error)) from None

    def idle_trained_run(self, name: str) -> RunDir:
        """A run a job may start on: trained, and no job of it running."""
        run = self.run_of(name)
        if jobs.is_running(run.root):
            raise HTTPException(409, f"{name} is running; wait for it or stop it first")
        if not (run.model / "training.json").is_file():
            raise HTTPException(409, f"{name} has not trained yet")
        return run

    @functools.cached_property
    def estimates(self):
        # Made on first use: newrun imports the data pipeline (torch), which the app's start must not wait for.
        from domaintune.workbench.newrun import Estimates

        return Estimates()
