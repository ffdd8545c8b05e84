"""The workbench's arena routes: base and tuned answer the same message side by side (streamed), and
blind choices go into the run's feedback store."""
from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse

from domaintune.config import EvaluationConfig
from domaintune.core.errors import DomaintuneError
from domaintune.core.local_pages import read_body
from domaintune.core.streaming import ClosingStreamingResponse
from domaintune.workbench.arena import MAX_MESSAGE_CHARS
from domaintune.workbench.context import Workbench
from domaintune.workbench.runs import name_of, raw_recipe, summarise

CHAT_BODY_CAP = 64 * 2**10


def router(bench: Workbench) -> APIRouter:
    router = APIRouter()

    @router.get("/runs/{name}/arena", response_class=HTMLResponse)
    def arena_page(name: str):
        run = bench.run_of(name)
        recipe = raw_recipe(run)
        evaluation = recipe.get("evaluation") if isinstance(recipe.get("evaluation"), dict) else {}
        return bench.page("arena.html.j2", summary=summarise(run), trained=(run.model / "training.json").is_file(),
                          base=name_of(recipe.get("model")), max_chars=MAX_MESSAGE_CHARS,
                          max_new_tokens=evaluation.get("max_new_tokens", EvaluationConfig().max_new_tokens))

    @router.post("/runs/{name}/arena/chat")
    async def arena_chat(name: str, request: Request):
        """Both answers to a message as server-sent events (read by fetch: a POST, so it carries the CSRF token)."""
        bench.csrf.check(request.headers.get("x-csrf-token"))
        body = await read_body(request, CHAT_BODY_CAP)
        run = bench.run_of(name)
        try:
            asked = json.loads(body)
            message, max_new_tokens = str(asked["message"]), asked.get("max_new_tokens") or 128
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise HTTPException(400, f"bad request: expected JSON with a message ({error})") from None
        if type(max_new_tokens) is not int:  # not a float: JSON's 1e999 is infinity
            raise HTTPException(400, f"max_new_tokens: a whole number, not {max_new_tokens!r}")
        try:
            stream = bench.arena.chat(run, str(asked.get("conversation") or ""), message, bool(asked.get("blind")),
                                      max_new_tokens)
        except DomaintuneError as error:
            raise HTTPException(400, str(error)) from None
        return ClosingStreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @router.post("/runs/{name}/arena/choose")
    async def arena_choose(name: str, request: Request):
        """A blind choice into the run's feedback store, as the feedback page records it; reveals who was who."""
        from domaintune.api import feedback_db
        from domaintune.evaluation.feedback import item_view, read_choice, record_choice, session_summary

        form = await bench.csrf.form(request)
        db = feedback_db(bench.run_of(name).root)
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

    return router
