"""A local page to collect people's preferences between answers (`domaintune feedback serve`).

`prepare_session` generates every answer up front (batched) and stores prompts and answers in a
SQLite file, so the page is instant and a session resumes where it stopped. Two kinds of session:
- base vs tuned: a run directory; by default its evaluated test samples (eval/samples.jsonl), so
  the choices line up with the LLM judge, and each choice is also written to eval/feedback.jsonl
  as {"index": N, "choice": "base"|"tuned"|"tie"} (judge.read_feedback reads it);
- samples: a model (or a run's tuned model with --prompts) answers each prompt `samples` times.
The answers are shown side by side in a random order stored per item (blind). Every click is
committed at once; `export_pairs` turns the choices into the `pairwise` data format.
The page is plain HTML forms: no JavaScript, nothing loaded from the internet.
"""
from __future__ import annotations

import json
import random
import sqlite3
from contextlib import closing
from importlib import resources
from pathlib import Path

from fastapi import Request  # at module level: FastAPI resolves the handler's (postponed) annotation here

from domaintune.config import ModelConfig
from domaintune.config.inference import InferenceConfig
from domaintune.core.chat import render
from domaintune.core.errors import DomaintuneError
from domaintune.evaluation.preference_report import write_preference_report
from domaintune.evaluation.win_rate import win_summary
from domaintune.models.generation import open_generator
from domaintune.storage.jsonl import read_json, read_jsonl, write_json, write_jsonl
from domaintune.storage.rundir import RunDir

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, prompt TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (item_id INTEGER NOT NULL, slot INTEGER NOT NULL, source TEXT NOT NULL,
                                    text TEXT NOT NULL, PRIMARY KEY (item_id, slot));
CREATE TABLE IF NOT EXISTS choices (item_id INTEGER PRIMARY KEY, choice TEXT NOT NULL, ratings TEXT,
                                    made_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);
"""
TIE = "tie"


def connect(db: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(str(db))
    connection.executescript(SCHEMA)
    return connection


def read_prompts(path: Path) -> list[list[dict]]:
    """Prompts as message lists: a .txt file holds one per line; JSONL rows have `prompt` (text or
    messages) or `messages` (a final assistant turn, the reference answer, is left out)."""
    if not path.is_file():
        raise DomaintuneError(f"--prompts {path}: file not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix.lower() == ".txt":
        return [[{"role": "user", "content": line.strip()}] for line in lines if line.strip()]
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DomaintuneError(f"{path} line {number}: not JSON ({error.msg})") from None
        prompt = row.get("prompt") if isinstance(row, dict) else None
        messages = row.get("messages") if isinstance(row, dict) else None
        if isinstance(prompt, str) and prompt.strip():
            prompts.append([{"role": "user", "content": prompt}])
        elif isinstance(prompt, list) and prompt:
            prompts.append(prompt)
        elif isinstance(messages, list) and messages:
            prompts.append(messages[:-1] if messages[-1].get("role") == "assistant" else messages)
        else:
            raise DomaintuneError(f"{path} line {number}: expected a 'prompt' (text or messages) or 'messages'")
    if not prompts:
        raise DomaintuneError(f"--prompts {path}: no prompts")
    return prompts


def _store(db: Path, kind: str, source: str, prompts: list[list[dict]], answers: dict[str, list[str]], seed: int) -> None:
    rng = random.Random(seed)
    with closing(connect(db)) as connection, connection:
        connection.executemany("INSERT INTO meta VALUES (?, ?)", [("kind", kind), ("source", source)])
        for index, prompt in enumerate(prompts):
            connection.execute("INSERT INTO items VALUES (?, ?)", (index, json.dumps(prompt, ensure_ascii=False)))
            names = list(answers)
            rng.shuffle(names)  # blind: the page shows the answers in this stored random order
            connection.executemany("INSERT INTO answers VALUES (?, ?, ?, ?)",
                                   [(index, slot, name, answers[name][index]) for slot, name in enumerate(names)])


def prepare_session(source: str, db: Path, prompts_file: Path | None = None, samples: int = 2,
                    max_new_tokens: int = 128, batch_size: int = 8, temperature: float = 0.8, seed: int = 0,
                    console=None) -> dict:
    """Create the session in `db` unless it exists (then it resumes). Returns its summary."""
    db = Path(db)
    existing = session_summary(db) if db.exists() else None
    if existing and existing["source"] is not None:  # no source: an earlier start failed before storing anything
        # Resuming another model's session would mix its choices into this one's.
        if Path(existing["source"]).resolve() != Path(source).resolve():
            raise DomaintuneError(f"{db} holds a session for {existing['source']}, not {source}; pass another --db")
        return existing
    db.parent.mkdir(parents=True, exist_ok=True)
    is_run = (Path(source) / "recipe.yaml").exists()
    if is_run and prompts_file is None:
        run = RunDir.open(source)
        samples_file = run.eval / "samples.jsonl"
        if not samples_file.exists():
            raise DomaintuneError(f"{source}: no eval/samples.jsonl; run `domaintune evaluate {source}` first, or pass --prompts")
        rows = read_jsonl(samples_file)
        if not rows or rows[0].get("base") is None:
            raise DomaintuneError(f"{samples_file}: no base answers (evaluation.compare_base was off); pass --prompts")
        # The evaluated samples keep their index, so people's choices line up with the judge's. Each holds the
        # prompt turns both models answered; a head objective's samples (and older evaluations') only the question.
        prompts = [row.get("prompt_messages") or [{"role": "user", "content": row["prompt"]}] for row in rows]
        _store(db, "base-vs-tuned", str(run.root), prompts,
               {"base": [row["base"] for row in rows], "tuned": [row["tuned"] for row in rows]}, seed)
    else:
        if prompts_file is None:
            raise DomaintuneError("--prompts FILE is needed for a model (a run directory defaults to its test samples)")
        prompts = read_prompts(Path(prompts_file))
        answers = _sample_answers(source, is_run, prompts, samples, max_new_tokens, batch_size, temperature, seed, console)
        _store(db, "samples", source, prompts, answers, seed)
    return session_summary(db)


def add_pair(db: Path, run_root: Path, prompt: list[dict], answers: dict[str, str]) -> int:
    """Add one prompt's base and tuned answers, in the shown order of `answers` (slot A first), to the
    run's base-vs-tuned session (the workbench's blind arena); returns the item's id for record_choice.
    A missing session starts from the run's evaluated samples, so `domaintune feedback` shows the same
    session; the new item is numbered after them, so a choice never lands on a sample the judge scored."""
    db = Path(db)
    if not db.exists() or session_summary(db)["source"] is None:
        prepare_session(str(run_root), db)
    meta = session_summary(db)
    if meta["kind"] != "base-vs-tuned" or Path(meta["source"]).resolve() != Path(run_root).resolve():
        raise DomaintuneError(f"{db} holds a {meta['kind']} session for {meta['source']}, not base vs tuned of "
                              f"{run_root}; move it aside to record choices here")
    if sorted(answers) != ["base", "tuned"]:
        raise DomaintuneError(f"expected a base and a tuned answer, not {sorted(answers)}")
    with closing(connect(db)) as connection, connection:
        item = connection.execute("SELECT COALESCE(MAX(id) + 1, 0) FROM items").fetchone()[0]
        connection.execute("INSERT INTO items VALUES (?, ?)", (item, json.dumps(prompt, ensure_ascii=False)))
        connection.executemany("INSERT INTO answers VALUES (?, ?, ?, ?)",
                               [(item, slot, name, text) for slot, (name, text) in enumerate(answers.items())])
    return item


def _sample_answers(source: str, is_run: bool, prompts, samples: int, max_new_tokens: int, batch_size: int,
                    temperature: float, seed: int, console) -> dict[str, list[str]]:
    """`samples` sampled answers per prompt from the model (a run's tuned model, or any model)."""
    if samples < 2:
        raise DomaintuneError("--samples must be at least 2: the page compares answers")
    if is_run:
        run = RunDir.open(source)
        recipe = run.recipe()
        generator = open_generator(recipe.model, recipe.inference, model_dir=run.model, exact=False, console=console)
    else:
        generator = open_generator(ModelConfig(name=source), InferenceConfig(), exact=False, console=console)
    rendered = [render(generator.tokenizer, prompt, add_generation_prompt=True) for prompt in prompts]
    answers = {}
    for number in range(1, samples + 1):
        if console is not None:
            console.print(f"Sampling answer {number}/{samples} for {len(prompts)} prompts...")
        generator.seed(seed + number)
        answers[f"sample-{number}"] = generator.generate(rendered, max_new_tokens, batch_size, temperature)
    return answers


def _meta(connection) -> dict[str, str]:
    return dict(connection.execute("SELECT key, value FROM meta").fetchall())


def session_summary(db: Path) -> dict:
    with closing(connect(db)) as connection:
        meta = _meta(connection)
        total = connection.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        choices = [choice for (choice,) in connection.execute("SELECT choice FROM choices")]
    summary = {"kind": meta.get("kind"), "source": meta.get("source"), "total": total, "done": len(choices)}
    if meta.get("kind") == "base-vs-tuned" and choices:
        summary.update(_win_rate(choices))
    return summary


def _win_rate(choices: list[str]) -> dict:
    """Tuned's win rate over base with a 95% Wilson interval."""
    return win_summary({name: choices.count(name) for name in ("tuned", TIE, "base")}, 0.95)


def item_view(db: Path, item: int | None = None) -> dict | None:
    """The item to show (the first without a choice unless `item` is given) with its answers in shown order."""
    with closing(connect(db)) as connection:
        if item is None:
            found = connection.execute("SELECT id FROM items WHERE id NOT IN (SELECT item_id FROM choices) ORDER BY id LIMIT 1").fetchone()
            if found is None:
                return None
            item = found[0]
        row = connection.execute("SELECT prompt FROM items WHERE id = ?", (item,)).fetchone()
        if row is None:
            return None
        answers = connection.execute("SELECT slot, text, source FROM answers WHERE item_id = ? ORDER BY slot", (item,)).fetchall()
        previous = connection.execute("SELECT choice FROM choices WHERE item_id = ?", (item,)).fetchone()
    return {"id": item, "prompt": json.loads(row[0]), "answers": [{"slot": slot, "letter": chr(65 + slot), "text": text, "source": source}
                                                              for slot, text, source in answers],
            "previous": previous[0] if previous else None}


def record_choice(db: Path, item: int, slot: int | None, ratings: dict[int, int] | None = None) -> None:
    """Store the choice (an answer's slot, or None for a tie) at once; a later choice replaces it."""
    with closing(connect(db)) as connection, connection:
        sources = dict(connection.execute("SELECT slot, source FROM answers WHERE item_id = ?", (item,)).fetchall())
        if not sources or (slot is not None and slot not in sources):
            raise DomaintuneError(f"item {item} has no answer {slot}")
        named = {sources[s]: value for s, value in (ratings or {}).items() if s in sources}
        connection.execute("INSERT OR REPLACE INTO choices (item_id, choice, ratings) VALUES (?, ?, ?)",
                           (item, TIE if slot is None else sources[slot], json.dumps(named) if named else None))
        meta = _meta(connection)
        if meta["kind"] == "base-vs-tuned":
            _write_run_feedback(connection, Path(meta["source"]))


def _write_run_feedback(connection, run_root: Path) -> None:
    """eval/feedback.jsonl (what the judge reads) and eval/feedback-summary.json, rewritten from the database."""
    eval_dir = run_root / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    rows = connection.execute("SELECT item_id, choice FROM choices ORDER BY item_id").fetchall()
    write_jsonl(eval_dir / "feedback.jsonl", [{"index": item, "choice": choice} for item, choice in rows])
    write_json(eval_dir / "feedback-summary.json", _win_rate([choice for _, choice in rows]))
    results = eval_dir / "results.json"
    if "preference" in read_json(results, {}):
        write_preference_report(RunDir(run_root))  # preferences.html shows people's win rate next to the reward's


def export_pairs(db: Path, out: Path) -> dict:
    """Write the choices as `pairwise` rows (prompt, chosen, rejected): the chosen answer against each
    other answer of its item. Ties state no preference and are left out. Returns the counts."""
    db = Path(db)
    if not db.is_file():
        raise DomaintuneError(f"{db}: no feedback database")
    pairs, ties = [], 0
    with closing(connect(db)) as connection:
        for item, prompt, choice in connection.execute(
            "SELECT items.id, items.prompt, choices.choice FROM choices JOIN items ON items.id = choices.item_id ORDER BY items.id"
        ):
            if choice == TIE:
                ties += 1
                continue
            answers = dict(connection.execute("SELECT source, text FROM answers WHERE item_id = ?", (item,)).fetchall())
            pairs += [{"prompt": json.loads(prompt), "chosen": answers[choice], "rejected": text, "source": {"item": item, "chosen": choice, "rejected": name}}
                      for name, text in answers.items() if name != choice and text.strip() != answers[choice].strip()]
    write_jsonl(Path(out), pairs)
    return {"pairs": len(pairs), "ties": ties, "out": str(out)}


def read_choice(form: dict[str, str]) -> tuple[int, int | None, dict[int, int]]:
    """(item, answer slot or None for a tie, ratings 1-5 by slot) from the form; ValueError or
    KeyError names a field that is missing or not what the page sends."""
    ratings = {}
    for key, value in form.items():
        if key.startswith("rating-"):
            slot, rating = int(key.removeprefix("rating-")), int(value)
            if not 1 <= rating <= 5:
                raise ValueError(f"{key}: a rating is 1 to 5, not {value}")
            ratings[slot] = rating
    choice = form["choice"]
    return int(form["item"]), None if choice == TIE else int(choice), ratings


def create_app(db: Path, host: str = "127.0.0.1"):
    """The FastAPI app of one session, served on `host`. Only requests naming this machine or `host`
    are answered, and a choice is taken only with the token of a page this app served: any web page
    the annotator visits could otherwise post choices (CSRF), or read the page through DNS rebinding."""
    import jinja2
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, RedirectResponse

    from domaintune.core.local_pages import PageToken, answer_this_machine_only

    db = Path(db)
    source = resources.files("domaintune.evaluation").joinpath("feedback.html.j2").read_text(encoding="utf-8")
    # Autoescape: prompts and answers are untrusted text and must not become markup.
    template = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True).from_string(source)
    app = FastAPI(title="domaintune feedback", docs_url=None, redoc_url=None, openapi_url=None)
    answer_this_machine_only(app, host, "feedback serve")
    csrf = PageToken()

    @app.get("/", response_class=HTMLResponse)
    def page(item: int | None = None):
        view = item_view(db, item)
        if item is not None and view is None:
            raise HTTPException(404, f"no item {item}")
        return template.render(view=view, summary=session_summary(db), csrf=csrf.value)

    @app.post("/choose")
    async def choose(request: Request):
        form = await csrf.form(request)
        try:
            item, slot, ratings = read_choice(form)
            record_choice(db, item, slot, ratings)
        except (DomaintuneError, KeyError, ValueError) as error:
            raise HTTPException(400, f"bad choice: {error}") from None
        return RedirectResponse("/", status_code=303)  # after a POST, a reload must not send it again

    return app


def serve(db: Path, host: str = "127.0.0.1", port: int = 8765) -> None:
    import uvicorn

    uvicorn.run(create_app(db, host), host=host, port=port, log_level="warning")
