"""The new-run page's work: store an uploaded data file inside the runs folder, show the file as the
data pipeline reads it (format, first rows rendered as the model sees them, rejected rows with line
and reason) before anything trains, and check a recipe written on the page, error by field."""
from __future__ import annotations

import io
import re
import secrets
import threading
import time
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import ValidationError
from rich.console import Console

from domaintune import api
from domaintune.config import DataConfig, ModelConfig, Recipe
from domaintune.config.recipe import format_validation_error, resolve_data_paths
from domaintune.core.chat import assistant_spans
from domaintune.core.errors import DomaintuneError
from domaintune.data.cleaning import normalise_row
from domaintune.data.documents import DOCUMENT_SUFFIXES
from domaintune.data.prepare import read_table
from domaintune.data.readers import SUFFIXES, read_files
from domaintune.models.loading import load_tokenizer
from domaintune.workbench.runs import inside

UPLOADS = "uploads"
PREVIEW_ROWS = 5
SHOWN_REJECTED = 50


def save_upload(runs: Path, filename: str, chunks, cap: int) -> Path:
    """Write the uploaded bytes to runs/uploads/<time>-<name> (<time>.2-<name>, ... for another one of that
    name in that second); DomaintuneError for a name that is not a data file or more bytes than `cap`
    (the partial file is removed)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(filename).name).lstrip(".")
    if not name or Path(name).suffix.lower() not in (*SUFFIXES, *DOCUMENT_SUFFIXES):
        raise DomaintuneError(f"{filename!r}: not a data file ({', '.join((*SUFFIXES, *DOCUMENT_SUFFIXES))})")
    folder = runs / UPLOADS
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    handle, copy = None, 1
    while handle is None:  # opened exclusively: two uploads at once can't take the same name
        target = folder / f"{stamp}{f'.{copy}' if copy > 1 else ''}-{name}"
        try:
            handle = target.open("xb")
        except FileExistsError:
            copy += 1
    written = 0
    try:
        with handle:
            for chunk in chunks:
                written += len(chunk)
                if written > cap:
                    raise DomaintuneError(f"{filename}: larger than the upload cap of {cap:,} bytes")
                handle.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target


@lru_cache(maxsize=4)
def _tokenizer(model: str):
    return load_tokenizer(ModelConfig(name=model))


def rendered(tokenizer, row: dict) -> list[tuple[str, bool]]:
    """The row as the model reads it, in pieces: (text, supervised) — the answer the loss trains on is marked."""
    if "text" in row:
        return [(row["text"], True)]
    text, spans = assistant_spans(tokenizer, row["messages"], row.get("tools"))
    pieces, position = [], 0
    for start, end in spans:
        pieces += [(text[position:start], False), (text[start:end], True)]
        position = end
    return [piece for piece in [*pieces, (text[position:], False)] if piece[0]]


def preview(runs: Path, relative: str, fmt: str = "auto", columns: dict[str, str] | None = None,
            model: str | None = None) -> dict:
    """What the data pipeline makes of a file in the runs folder: its format, first rows rendered for
    `model`, and every rejected row with its line and reason."""
    path = inside(runs, relative)
    config = DataConfig(train=[str(path)], format=fmt, columns=columns or {})
    if path.suffix.lower() in DOCUMENT_SUFFIXES:
        return {"file": relative, "format": "document", "rows": [], "rejected": [], "read": None}
    [(path, raw_rows)] = read_files([str(path)])
    rows, found, bad = read_table(path, raw_rows, config)
    tokenizer = _tokenizer(model or ModelConfig().name)
    return {
        "file": relative, "format": found, "read": len(raw_rows), "accepted": len(rows),
        "rows": [rendered(tokenizer, normalise_row(row)) for row in rows[:PREVIEW_ROWS]],
        "rejected": [{"line": item["line"], "reason": item["reason"]} for item in bad[:SHOWN_REJECTED]],
        "rejected_total": len(bad),
    }


def parse_columns(text: str) -> dict[str, str]:
    """`output=answer, instruction=question` → {"output": "answer", "instruction": "question"}."""
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        canonical, sep, theirs = item.partition("=")
        if not sep or not canonical.strip() or not theirs.strip():
            raise DomaintuneError(f"column mapping {item!r}: write it as canonical=yours, e.g. output=answer")
        mapping[canonical.strip()] = theirs.strip()
    return mapping


def starting_recipe(relative: str, model: str, fmt: str, columns: dict[str, str]) -> str:
    """The YAML the page starts from: the file, model and mapping chosen, defaults for the rest."""
    data = {"train": [relative], **({"format": fmt} if fmt != "auto" else {}), **({"columns": columns} if columns else {})}
    recipe = {"name": re.sub(r"[^A-Za-z0-9_.-]", "-", Path(relative).stem.split("-", 2)[-1]) or "run",
              "model": {"name": model}, "data": data, "method": {"name": "lora"}, "objective": {"name": "sft"},
              "training": {"epochs": 1}}
    return yaml.safe_dump(recipe, sort_keys=False)


def _line_of(text: str, field: str) -> int | None:
    """The YAML line (from 1) of the key `field` names (a.b.c), or of its nearest parent that is there."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in field.split("."):
        if isinstance(node, yaml.MappingNode):
            pair = next(((key, value) for key, value in node.value if key.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            pair = (node.value[int(part)], node.value[int(part)])
        else:
            pair = None
        if pair is None:
            break
        line, node = pair[0].start_mark.line + 1, pair[1]
    return line


def check_recipe(runs: Path, text: str) -> tuple[Recipe | None, list[dict]]:
    """The recipe written on the page, with output_dir the runs folder and every file it reads data from
    resolved inside it; else its problems as {"field", "message", "line"}."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        return None, [{"field": "<yaml>", "message": f"not valid YAML ({getattr(error, 'problem', error)})",
                       "line": mark.line + 1 if mark else None}]
    if not isinstance(data, dict):
        return None, [{"field": "<recipe>", "message": "a recipe is a mapping of sections (model, data, method, ...)",
                       "line": 1}]
    data["output_dir"] = str(runs)  # runs made here live in the runs folder, whatever the YAML says
    problems = []

    def problem(field: str, message: str) -> None:
        problems.append({"field": field, "message": message, "line": _line_of(text, field)})

    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as error:
        for line in format_validation_error(error).splitlines():
            problem(*line.partition(": ")[::2])
        return None, problems

    def confined(field: str, path: str) -> str:
        # The prepared rows are shown on the run's pages: a file outside the runs folder would be read out.
        try:
            return str(inside(runs, path))
        except DomaintuneError as error:
            problem(field, str(error))
            return path

    resolve_data_paths(recipe, runs, confined)
    if recipe.stages:  # a job here is one run directory; a curriculum makes one per stage
        problem("stages", "a curriculum trains one run per stage, which the workbench does not start yet; "
                          "run this recipe with `domaintune run` (its runs then show here)")
    for field in _reward_functions(recipe):
        problem(field, "a reward function runs code, which a page may not name; give a regex or a reward model, "
                       "or run this recipe with `domaintune run`")
    return (None, problems) if problems else (recipe, [])


def _reward_functions(recipe: Recipe) -> list[str]:
    """The fields of the recipe's (and its stages') rewards that name a Python function."""
    objectives = [("objective", recipe.objective.model_dump())]
    objectives += [(f"stages.{number}.objective", stage.objective) for number, stage in enumerate(recipe.stages or [])
                   if stage.objective]
    return [f"{where}.rewards.{index}.function" for where, objective in objectives
            for index, reward in enumerate(objective.get("rewards") or []) if reward.get("function")]


class Estimates:
    """`domaintune estimate` on recipes from the page, one at a time, each in a thread: it takes tens of
    seconds (it prepares the data and times a few training steps in a child process), so the request
    returns at once and the page polls for the output, which grows as the estimate prints."""

    KEPT = 20

    def __init__(self):
        self._lock = threading.Lock()
        self._states: dict[str, dict] = {}

    def start(self, recipe: Recipe) -> str:
        """The new estimate's id; DomaintuneError while another one runs (two probes would time each other)."""
        with self._lock:
            if any(not state["done"] for state in self._states.values()):
                raise DomaintuneError("an estimate is running already: wait for it to finish")
            for old in list(self._states)[: max(0, len(self._states) - self.KEPT + 1)]:
                del self._states[old]
            ident = secrets.token_urlsafe(8)
            console = Console(file=io.StringIO(), width=120, highlight=False)
            self._states[ident] = {"done": False, "error": None, "console": console}
        # Not a daemon: an app stopped mid-estimate waits for it, so its finally blocks remove the scratch copy of
        # the user's data and end the probe's child process (a daemon thread would just vanish, leaving both).
        threading.Thread(target=self._run, args=(self._states[ident], recipe), name="domaintune-estimate").start()
        return ident

    @staticmethod
    def _run(state: dict, recipe: Recipe) -> None:
        try:
            api.estimate(recipe, console=state["console"])
        except DomaintuneError as error:
            state["error"] = str(error)
        except Exception as error:  # noqa: BLE001 - shown on the page, not lost with the thread
            state["error"] = f"{type(error).__name__}: {error}"
        state["done"] = True

    def state(self, ident: str) -> dict | None:
        """{"done", "error", "text"} of an estimate; None for an unknown id."""
        state = self._states.get(ident)
        if state is None:
            return None
        return {"done": state["done"], "error": state["error"], "text": state["console"].file.getvalue()}
