"""`domaintune init DATA...`: a recipe written from the data, so a first run needs no guessing.

The files are read as `data prepare` reads them. The format is the one most rows' columns fit; where no
format fits, the columns are mapped by their values (a column of a few short values is a label, the one
with the longest texts is the text) and their names, and beside a `text` column, a column of a few short
values is the label when its name or the --task says so. The rows are then converted as training would see them
to learn the label set and its balance, the answer style (which picks the metrics) and the token
lengths, and the recipe is sized from those counts. Every decision is a comment in the recipe, with its
reason; what could not be decided is a comment too, never a silent guess.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import yaml

from domaintune.config import DataConfig, validate_recipe
from domaintune.config.recipe import ModelConfig
from domaintune.core.answers import MAX_LABELS, answer_counts
from domaintune.core.chat import count_tokens, final_answer
from domaintune.core.errors import DomaintuneError
from domaintune.data.documents import is_document
from domaintune.data.formats import FORMATS, RowError, detect_format, detect_rows_format, to_canonical
from domaintune.data.preferences import PREFERENCE_FORMATS
from domaintune.data.readers import read_files
from domaintune.evaluation.metric_choice import choose_metrics, closed_label_set, majority_share
from domaintune.models.loading import load_tokenizer
from domaintune.objectives.instruct import instruction

# Name fragments that say what a column holds, strongest first.
TEXT_NAMES = ("text", "review", "sentence", "content", "body", "comment", "description", "document", "message", "input")
LABEL_NAMES = ("label", "sentiment", "class", "category", "target", "tag", "intent", "topic")
PROMPT_NAMES = ("question", "prompt", "query", "instruction", "input")
# Balance labels when the majority answer is this many times its fair share (0.75 of yes/no, 0.5 of 3 labels).
SKEWED_FOR_BALANCE = 1.5
STEP_TOKENS = 2048  # most tokens one optimiser micro-step holds (memory; see sized_training)
RARE_TEST_ROWS = 5  # test rows the rarest answer of a closed set should get, where the data allows
ANSWER_NAMES = ("answer", "response", "output", "completion", "reply")


def words(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", name.lower()).strip()


def name_score(name: str, fragments: tuple[str, ...]) -> int:
    """Higher the earlier a fragment of `fragments` occurs in the column's name; 0 when none does."""
    return next((len(fragments) - rank for rank, fragment in enumerate(fragments) if fragment in words(name)), 0)


def column_names(rows: list[dict]) -> list[str]:
    """Every column of the rows, in the order they first appear (a first row may lack one)."""
    return list(dict.fromkeys(name for row in rows for name in row))


def column_profile(rows: list[dict]) -> dict[str, dict]:
    """Per column: how many distinct values it has and how long its string values are."""
    profile = {}
    for name in column_names(rows):
        values = [row.get(name) for row in rows if isinstance(row.get(name), (str, int, float, bool))]
        texts = [str(value) for value in values]
        profile[name] = {"distinct": len(set(texts)), "mean_length": sum(map(len, texts)) / max(1, len(texts)),
                         "filled": len(values) / len(rows)}
    return profile


def label_columns(profile: dict[str, dict]) -> list[str]:
    """The columns that hold a label by their values: a few distinct short values, in most rows."""
    return [name for name, facts in profile.items()
            if facts["filled"] > 0.5 and 1 < facts["distinct"] <= MAX_LABELS and facts["mean_length"] <= 40]


def propose_columns(rows: list[dict]) -> tuple[str, dict[str, str], list[str]]:
    """A format and a column mapping for rows no format fits by name, and the reasons."""
    profile = column_profile(rows)
    usable = [name for name, facts in profile.items() if facts["filled"] > 0.5]
    labels = label_columns(profile)
    texts = [name for name in usable if name not in labels and profile[name]["mean_length"] > 0]
    if not texts:
        raise DomaintuneError(f"init: no column holds text (columns: {', '.join(profile)}); map one with data.columns")
    by_text = sorted(texts, key=lambda n: (-name_score(n, TEXT_NAMES), -profile[n]["mean_length"]))
    if labels:
        label = sorted(labels, key=lambda n: (-name_score(n, LABEL_NAMES), profile[n]["distinct"]))[0]
        text = by_text[0]
        return "labelled", {"text": text, "label": label}, [
            f"'{label}' holds {profile[label]['distinct']} distinct short values: the label",
            f"'{text}' holds the longest texts ({profile[text]['mean_length']:.0f} characters on average): the text"]
    if len(texts) >= 2:
        prompt = sorted(texts, key=lambda n: (-name_score(n, PROMPT_NAMES), profile[n]["mean_length"]))[0]
        answer = sorted((n for n in texts if n != prompt), key=lambda n: -name_score(n, ANSWER_NAMES))[0]
        return "prompt_completion", {"prompt": prompt, "completion": answer}, [
            f"'{prompt}' reads as the request and '{answer}' as the answer (by their names and lengths)"]
    return "text", {"text": texts[0]}, [f"'{texts[0]}' is the only text column: raw text for continued pretraining"]


def label_beside_text(rows: list[dict], task: str | None) -> tuple[str | None, list[str], list[str]]:
    """For rows of the text format: the column that labels the text, the reasons, and what is left undecided.

    A column of a few short values beside `text` is a label when its name says so or the --task names it;
    otherwise it may as well be a language or a source, so the recipe only points at it."""
    profile = column_profile(rows)
    candidates = sorted((name for name in label_columns(profile) if name != "text"),
                        key=lambda n: (-name_score(n, LABEL_NAMES), profile[n]["distinct"]))
    if not candidates:
        return None, [], []
    best = candidates[0]
    named = name_score(best, LABEL_NAMES) > 0 or bool(task and _long_words(best) & _long_words(task))
    facts = f"'{best}' holds {profile[best]['distinct']} distinct short values"
    if named:
        return best, [f"{facts}: the label (by its name{' and the --task' if task else ''})"], []
    return None, [], [f"{facts} and may be a label: to classify the texts by it, set data.format: labelled, "
                      f"data.columns: {{label: {best}}} and a data.label_prompt with {{text}} (or name it in --task)"]


def _long_words(text: str) -> set[str]:
    return {word for word in words(text).split() if len(word) > 2}


def detect(paths: list[str], task: str | None = None) -> tuple[str, dict[str, str], list[str], list[dict], list[str]]:
    """The data's format, its column mapping, the reasons, the parsed rows, and what is left undecided."""
    documents = [path for path in paths if is_document(path)]
    if documents and len(documents) == len(paths):
        return ("auto", {}, ["documents (PDF, DOCX, HTML, Markdown, text): cut into chunks for continued pretraining"],
                [], [])
    if documents:
        raise DomaintuneError("init: give either data files (JSONL, JSON, CSV, Parquet) or documents, not both")
    parsed = [row.data for _, rows in read_files(paths) for row in rows if row.data is not None]
    if not parsed:
        raise DomaintuneError(f"init: no row could be read from {', '.join(paths)}")
    names = ", ".join(column_names(parsed))
    # The format most rows fit, as `data prepare` decides it: one odd first row does not decide for the file.
    fmt = detect_rows_format(parsed, DataConfig())
    if fmt is not None:
        fitting = [data for data in parsed if detect_format(data, DataConfig()) == fmt]
        reasons = [f"the columns ({names}) are those of the {fmt} format" if len(fitting) == len(parsed) else
                   f"{len(fitting)} of {len(parsed)} rows have the columns of the {fmt} format "
                   f"({', '.join(FORMATS[fmt])}); `data prepare` sets the others aside, with the reason"]
        if fmt != "text":
            return fmt, {}, reasons, parsed, []
        label, why, undecided = label_beside_text(fitting, task)
        if label is None:
            return fmt, {}, reasons, parsed, undecided
        return "labelled", {"label": label}, [f"the columns ({names}): 'text' is the text", *why], parsed, []
    fmt, columns, reasons = propose_columns(parsed)
    return fmt, columns, [f"no format matches the columns ({names}) by name; mapped by their values:", *reasons], \
        parsed, []


def canonical_rows(parsed: list[dict], config: DataConfig, fmt: str) -> list[dict]:
    rows = []
    for data in parsed:
        try:
            rows.append(to_canonical(data, fmt, config))
        except RowError:
            continue  # `data prepare` sets such rows aside with their reason; they don't shape the recipe
    return rows


def percentile(values: list[int], share: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0


def sized_training(train_rows: int, tokens_per_row: int = 0) -> tuple[dict, str]:
    """Epochs, learning rate and batch layout for a LoRA run of this many training rows, and how they were sized."""
    # About 1,000 examples seen is where the quickstart's LoRA run (938 rows, 1 epoch) stopped improving.
    epochs = max(1, min(5, math.ceil(1000 / max(1, train_rows))))
    # lr 1e-3 with r 16 is the quickstart's measured setting for ~1k rows; larger sets take the usual 2e-4.
    lr = 1e-3 if train_rows <= 5000 else 2e-4
    # Training memory grows with the tokens of a step (several MB a token on the bundled model in fp32: a
    # batch of 8 multi-turn rows of ~400 tokens took 17-20 GB), so long rows are split over gradient
    # accumulation: the effective batch stays 8 while a micro-step holds at most ~STEP_TOKENS tokens.
    batch = 8
    while batch > 1 and batch * tokens_per_row > STEP_TOKENS:
        batch //= 2
    accumulate = 8 // batch
    steps = math.ceil(train_rows / 8) * epochs
    every = max(5, steps // 4)
    layout = (f"steps of {batch} rows x {accumulate} accumulated, as rows of ~{tokens_per_row} tokens take memory"
              if accumulate > 1 else f"steps of {batch}")
    return ({"epochs": epochs, "batch_size": batch, **({"grad_accum": accumulate} if accumulate > 1 else {}),
             "lr": lr, "warmup_ratio": 0.05, "eval_every": every, "save_every": every},
            f"{train_rows} training rows: {epochs} epoch(s) so about 1,000 examples are seen ({steps} {layout}), "
            f"lr {lr:g} for LoRA r 16, validation and checkpoints every {every} steps")


def split_shares(rows: int, rarest_answer: int | None = None) -> tuple[dict, str]:
    """Test and validation shares for `rows` rows; `rarest_answer` is the row count of the rarest answer
    of a closed answer set (the split is stratified by it)."""
    # At least ~30 test rows where the data allows: fewer make every interval too wide to decide anything.
    wanted = 30 / max(1, rows)
    if rarest_answer:
        # Macro-F1 scores every answer alike: two test rows of a rare answer cannot decide it.
        wanted = max(wanted, RARE_TEST_ROWS / rarest_answer)
    test = round(min(0.3, max(0.1, wanted)), 2)
    validation = round(min(0.1, max(0.05, 20 / max(1, rows))), 2)
    rare = (f"; the rarest answer ({rarest_answer} rows) gets about {round(rarest_answer * test)} test rows"
            if rarest_answer else "")
    return ({"validation": validation, "test": test},
            f"{rows} rows: {test:.0%} test (about {round(rows * test)} rows{rare}) and {validation:.0%} validation")


def init_recipe(paths: list[str], task: str | None = None, model: str = "smollm2-135m-instruct",
                name: str | None = None) -> tuple[dict, list[str]]:
    """The recipe for these data files (as a dict) and the comments that explain it."""
    if not paths:
        raise DomaintuneError("init: name at least one data file")
    paths = [str(Path(path).resolve()) for path in paths]
    fmt, columns, notes, parsed, undecided = detect(paths, task)
    data: dict = {"train": paths}
    if fmt != "auto":
        data["format"] = fmt
    if columns:
        data["columns"] = columns
    recipe: dict = {"name": name or re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(paths[0]).stem).strip("-") or "run",
                    "model": {"name": model}, "data": data, "method": {"name": "lora", "r": 16, "alpha": 32, "dropout": 0.0}}
    if fmt == "auto" or fmt == "text":
        recipe["objective"] = {"name": "pretrain", "block_size": 512}
        notes.append("raw text: objective pretrain (continued pretraining on 512-token blocks); the report compares perplexity")
        recipe["evaluation"] = {"metrics": []}
        if parsed:
            training, why = sized_training(len(parsed))
            recipe["training"] = training
            notes.append(why)
        else:
            undecided.append("how many chunks the documents make is known only after `data prepare`: "
                             "training.epochs is left at 1")
        if task:
            undecided.append("--task given, but raw text has no requests to open with it: objective pretrain "
                             "does not use it; for a task, give data with answers (labels, completions, chats)")
        return recipe, _with_undecided(notes, undecided)
    if fmt in PREFERENCE_FORMATS:
        objective = "kto" if fmt == "rating" else "dpo"
        recipe["objective"] = {"name": objective}
        notes.append(f"{fmt} preferences: objective {objective} "
                     f"({'answers rated on a scale' if objective == 'kto' else 'a better and a worse answer per prompt'})")
    config = DataConfig(format=fmt, columns=columns, label_prompt="{text}")
    rows = canonical_rows(parsed, config, fmt)
    if not rows:
        raise DomaintuneError(f"init: no row of {', '.join(paths)} fits the {fmt} format; see `domaintune data prepare`")
    label_counts = Counter(row["label"] for row in rows if row.get("label") is not None)
    if fmt == "labelled":
        labels = sorted(label_counts)
        # The label prompt is a format template: braces of the task or a label are literal text.
        data["label_prompt"] = instruction(literal(task or "Classify the text."), [literal(label) for label in labels],
                                           "{text}")
        balance = ", ".join(f"{label} {count / len(rows):.0%}" for label, count in label_counts.most_common())
        notes.append(f"{len(labels)} labels ({balance}); the label prompt lists them so the answer is one of them")
        if task is None:
            undecided.append("no --task given: the label prompt opens with a generic 'Classify the text.'; "
                             "describe the task there in your own words")
    elif task:
        recipe["objective"] = {"name": "instruct", "task": task}
        notes.append("--task given: objective instruct opens every request with it")
    tokenizer = load_tokenizer(ModelConfig(name=model))
    lengths = [count_tokens(tokenizer, row) for row in rows]
    longest = percentile(lengths, 0.99)
    data["max_tokens"] = max(64, min(2048, 64 * math.ceil(longest * 1.1 / 64)))
    notes.append(f"token lengths: median {percentile(lengths, 0.5)}, 99th percentile {longest}: max_tokens "
                 f"{data['max_tokens']} keeps 99% of rows whole (longer ones are set aside, with the reason)")
    counts = answer_counts(rows)
    shares, why = split_shares(len(rows), min(counts.values()) if counts else None)
    data["split"] = shares
    notes.append(why)
    training, why = sized_training(round(len(rows) * (1 - shares["validation"] - shares["test"])),
                                   percentile(lengths, 0.5))
    recipe["training"] = training
    notes.append(why)
    metrics, why = choose_metrics("auto", rows, rows)
    answers = [final_answer(row) for row in rows if "messages" in row]
    longest_answer = max((len(tokenizer(answer, add_special_tokens=False)["input_ids"]) for answer in answers), default=16)
    recipe["evaluation"] = {"metrics": "auto", "max_new_tokens": max(8, min(256, int(longest_answer * 1.5) + 4))}
    notes.append(f"metrics: auto, which on this data picks {', '.join(metrics) or 'none'} ({why}); "
                 f"max_new_tokens {recipe['evaluation']['max_new_tokens']} covers the longest answer")
    labels = closed_label_set(rows, rows)
    if labels:
        recipe["evaluation"]["answers"] = "constrained"
        notes.append(f"the answers form a closed set of {len(labels)}: the verdict scores the tuned model's likeliest "
                     "allowed answer (evaluation.answers: constrained), so an answer outside the set cannot happen; "
                     "every baseline is read the same way too, and the report adds lenient readings")
        share = majority_share(rows)
        if share >= SKEWED_FOR_BALANCE / len(labels):
            data["balance_labels"] = True
            notes.append(f"one answer is {share:.0%} of the rows: data.balance_labels repeats the rarer answers' "
                         "training rows, so the model does not learn to give the majority answer to everything")
    return recipe, _with_undecided(notes, undecided)


def literal(text: str) -> str:
    """`text` as literal text in a str.format template."""
    return text.replace("{", "{{").replace("}", "}}")


def _with_undecided(notes: list[str], undecided: list[str]) -> list[str]:
    return notes + [f"NOT DECIDED: {item}" for item in undecided]


def recipe_text(recipe: dict, notes: list[str], sources: list[str]) -> str:
    """The recipe as YAML, opened by the reasons for every choice."""
    header = [f"# Written by `domaintune init` from {', '.join(Path(s).name for s in sources)}.", "# Why:"]
    header += [f"#   - {note}" for note in notes]
    header += ["# Check it with `domaintune recipe check`; `domaintune estimate` predicts its run time.", ""]
    return "\n".join(header) + "\n" + yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)


def write_recipe(paths: list[str], out: Path, task: str | None = None, model: str = "smollm2-135m-instruct",
                 name: str | None = None) -> tuple[Path, dict, list[str]]:
    recipe, notes = init_recipe(paths, task=task, model=model, name=name)
    validate_recipe(recipe, source="the recipe init wrote")  # a recipe init writes must check
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(recipe_text(recipe, notes, paths), encoding="utf-8")
    return out, recipe, notes

