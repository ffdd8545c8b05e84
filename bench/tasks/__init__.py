"""The task suite's tasks: small business tasks built from data that ships inside a PyPI wheel.

Every data set here is a member of the `evals` wheel (OpenAI's evals registry, MIT licence), read
from the wheel the quickstart already downloads (never installed). Each task module converts its
rows into the file a user would bring (CSV, Alpaca JSON, OpenAI chat JSONL, ShareGPT, Parquet),
so the suite also tests that those files are read as people have them. The quickstart's
ner_finance set is deliberately not among them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import conversational_sql, event_severity, invoice_amounts, population_spans, product_matching, radio_exam

MODULES = (event_severity, product_matching, invoice_amounts, radio_exam, population_spans, conversational_sql)


@dataclass(frozen=True)
class Task:
    name: str
    shape: str  # what kind of task it is, in words
    member: str  # the data set's path inside the evals wheel
    filename: str  # the file written for `domaintune init` (its extension picks the reader)
    max_rows: int  # rows kept, so the suite fits its time budget
    task: str | None  # the --task sentence a user would give `init` (None: init decides)
    convert: Callable[[list[dict], int], list[dict]]  # the wheel's rows -> the user's rows, capped
    write: Callable[[Path, list[dict]], None]


TASKS = [Task(**module.TASK) for module in MODULES]
