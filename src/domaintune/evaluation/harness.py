"""lm-evaluation-harness bridge (`domaintune evaluate --harness`, needs the `harness` extra).

The run's test split, its labels, the general probes and `evaluation.harness_files` become local lm-eval
tasks: a YAML file plus a JSONL file each, read with `dataset_path: json`, so they run offline. They
are written to RUN_DIR/eval/harness/ and can be re-run by hand with `lm_eval --include_path`.
Prompts are rendered with the model's chat template here, exactly as domaintune's own evaluation does.
"""
from __future__ import annotations

import functools
from pathlib import Path

import yaml

from domaintune.config import Recipe
from domaintune.core.chat import final_answer, prompt_text
from domaintune.core.errors import DomaintuneError
from domaintune.data.prepare import read_table
from domaintune.data.readers import read_files
from domaintune.evaluation.forgetting import Probe, load_probes, probe_prompt
from domaintune.storage.jsonl import write_jsonl

PREFIX = "domaintune_"
MULTIPLE_CHOICE = {
    "output_type": "multiple_choice",
    "doc_to_text": "query",
    "doc_to_choice": "choices",
    "doc_to_target": "gold",
    "target_delimiter": "",  # the rendered prompt already ends where the answer starts
    "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                    {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
}


def _generate_until(tokenizer, max_new_tokens: int) -> dict:
    return {
        "output_type": "generate_until",
        "doc_to_text": "prompt",
        "doc_to_target": "target",
        "target_delimiter": "",
        "generation_kwargs": {"until": [tokenizer.eos_token], "do_sample": False, "max_gen_toks": max_new_tokens},
        # Models pad answers with whitespace and chatter after the first line; score the first line.
        "filter_list": [{"name": "first_line", "filter": [
            {"function": "regex", "regex_pattern": r"^\s*([^\n]*?)\s*(?:\n|$)", "fallback": ""},
            {"function": "take_first"},
        ]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "ignore_punctuation": False}],
    }


def _write_task(folder: Path, name: str, docs: list[dict], spec: dict) -> str:
    data = folder / f"{name}.jsonl"
    write_jsonl(data, docs)
    task = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", **spec}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return name


def _choice_docs(tokenizer, probes: list[Probe]) -> list[dict]:
    return [{"query": probe_prompt(tokenizer, p), "choices": p.choices, "gold": p.answer} for p in probes]


def _chat_docs(tokenizer, rows: list[dict]) -> list[dict]:
    return [{"prompt": prompt_text(tokenizer, row["messages"], row.get("tools")), "target": final_answer(row)}
            for row in rows if "messages" in row]


def _extra_file(file: Path, raw_rows: list, recipe: Recipe) -> tuple[str, list]:
    """Probes if the file is multiple choice (question, choices, answer), else chat rows of any data format."""
    first = next((row.data for row in raw_rows if row.data), None)
    if first is None:
        raise DomaintuneError(f"evaluation.harness_files: {file} holds no rows")
    if {"question", "choices", "answer"} <= set(first):
        return "choice", load_probes(str(file))[1]
    rows, _, rejected = read_table(file, raw_rows, recipe.data)
    if rejected:
        raise DomaintuneError(f"evaluation.harness_files: {file} line {rejected[0]['line']}: {rejected[0]['reason']}")
    return "chat", rows


def write_tasks(folder: Path, recipe: Recipe, tokenizer, test_rows: list[dict], probes: list[Probe]) -> list[str]:
    """Write every local task of this run into `folder`; returns the task names."""
    folder.mkdir(parents=True, exist_ok=True)
    generate = _generate_until(tokenizer, recipe.evaluation.max_new_tokens)
    tasks = [_write_task(folder, f"{PREFIX}test", _chat_docs(tokenizer, test_rows), generate)]
    labelled = [row for row in test_rows if row.get("label") is not None and "messages" in row]
    if labelled:
        # Classification: the label set is the choice list, scored by likelihood instead of generation.
        labels = sorted({row["label"] for row in labelled})
        docs = [{"query": prompt_text(tokenizer, row["messages"], row.get("tools")), "choices": labels, "gold": labels.index(row["label"])}
                for row in labelled]
        tasks.append(_write_task(folder, f"{PREFIX}labels", docs, MULTIPLE_CHOICE))
    if probes:
        tasks.append(_write_task(folder, f"{PREFIX}probes", _choice_docs(tokenizer, probes), MULTIPLE_CHOICE))
    for file, raw_rows in read_files(recipe.evaluation.harness_files):
        kind, items = _extra_file(file, raw_rows, recipe)
        name = PREFIX + "".join(ch if ch.isalnum() else "_" for ch in file.stem)
        docs = _choice_docs(tokenizer, items) if kind == "choice" else _chat_docs(tokenizer, items)
        tasks.append(_write_task(folder, name, docs, MULTIPLE_CHOICE if kind == "choice" else generate))
    return tasks


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise DomaintuneError("--harness needs lm-evaluation-harness: pip install 'domaintune[harness]'") from None
    return lm_eval, HFLM, TaskManager


@functools.lru_cache(maxsize=4)
def _task_manager(folder: str, builtin: bool):
    # Indexing lm-eval's thousands of built-in task files takes many seconds: only when asked, and once.
    _, _, TaskManager = _lm_eval()
    return TaskManager(include_path=folder, include_defaults=builtin)


def check_builtin_tasks(folder: Path, names: list[str]) -> None:
    """Fail before any model loads when evaluation.harness_tasks names a task lm-eval doesn't know."""
    if not names:
        return
    known = set(_task_manager(str(folder), True).all_tasks)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise DomaintuneError(f"evaluation.harness_tasks: lm-eval has no task {', '.join(map(repr, unknown))}")


def run_tasks(model, tokenizer, folder: Path, local: list[str], builtin: list[str], batch_size: int,
              limit: int | None) -> dict[str, dict[str, float]]:
    """Scores per task ({"exact_match,first_line": 0.4, "acc,none": ...}) for one loaded model."""
    lm_eval, HFLM, _ = _lm_eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = _task_manager(str(folder), bool(builtin))
    scores: dict[str, dict[str, float]] = {}
    # Built-in tasks run one by one, so a failure can name the task whose data could not load.
    for tasks in ([local] if local else []) + [[name] for name in builtin]:
        try:
            output = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                                             log_samples=False, verbosity="ERROR")
        except Exception as error:  # lm-eval raises whatever datasets/hub raise; say what it means
            if tasks is local:
                raise
            raise DomaintuneError(
                f"evaluation.harness_tasks: lm-eval task {tasks[0]!r} could not load its data ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}). Built-in lm-eval tasks download their data "
                "from the Hugging Face hub, which this machine may not reach; put the items in a JSONL file "
                "and list it under evaluation.harness_files instead."
            ) from None
        for task, values in output["results"].items():
            # Scores are keyed "metric,filter"; lm-eval's stderr (from its own bootstrap) and counts are left out.
            scores[task] = {key: float(value) for key, value in values.items()
                            if "," in key and "_stderr" not in key and isinstance(value, (int, float))}
    return scores
