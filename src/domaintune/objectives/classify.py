"""Classification with a task head: a label per text, a number per text (regression), or entity
tags per token, on an encoder (minilm-l6) or on a causal LM's body.

Labels: `sequence` reads each row's `label` (labelled rows; a conversation's answer otherwise),
`regression` its numeric label, `token` the entity spans (`spans` rows) or the `[NAME - TYPE, ...]`
answer list matched back to the text (data/token_labels.py) as BIO tags on the tokenizer's offsets.
Rows that can't be labelled are set aside with the reason in data/classify_rejected.jsonl.
The `head` method decides what trains. The label map is saved in the model config (id2label,
label2id) and in labels.json. Evaluation: accuracy and macro-F1 with a confusion matrix against the
majority class (sequence), R² and MSE against the training mean (regression), entity precision,
recall and F1 against the untrained head (token), scored like the generative models' answers.
"""
from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path

from rich.console import Console

from domaintune.config.objectives import ClassifyConfig
from domaintune.config.runtime import configure_threads, use_bf16
from domaintune.core.chat import IGNORE_INDEX, final_answer, last_user_turn
from domaintune.core.errors import DomaintuneError
from domaintune.data.token_labels import (
    ListMismatch,
    answer_from_spans,
    bio_labels,
    bio_tags,
    row_spans,
    spans_from_tags,
)
from domaintune.evaluation.base_vs_tuned import write_results
from domaintune.evaluation.bootstrap import ItemStats, metric_item_stats, paired_comparison
from domaintune.evaluation.errors_analysis import label_confusion
from domaintune.evaluation.metrics import compute_metrics, entity_errors
from domaintune.methods import get_method
from domaintune.models.loading import PEFT_ADAPTER_FILES, from_pretrained, is_adapter_folder, load_tokenizer
from domaintune.storage.rundir import RunDir
from domaintune.training.checkpoints import atomic_trainer, save_final
from domaintune.training.trainer import count_parameters, trainer_callbacks, training_arguments

SUMMARY = "a classification, regression or entity-tagging head (method head): fast, exact labels, no generation"
Config = ClassifyConfig  # the registry and the recipe know an objective by its Config
LABELS_FILE = "labels.json"
SPLITS = ("train", "validation", "test")


# --- rows to examples ---------------------------------------------------------------------------


def _target(row: dict, task: str):
    """A row's training target; raises ValueError with the reason when it has none."""
    if task == "token":
        try:
            return row_spans(last_user_turn(row["messages"]), row)
        except ListMismatch as error:
            raise ValueError(error.reason) from None
    label = row.get("label") if row.get("label") is not None else final_answer(row)
    if task == "regression":
        try:
            return float(label)
        except ValueError:
            raise ValueError(f"label {label!r} is not a number (regression)") from None
    return label


def targets(rows: list[dict], task: str) -> tuple[list[tuple[dict, object]], list[dict]]:
    """(row, target) for every usable row, and the rejected ones with their reason and source."""
    usable, rejected = [], []
    for row in rows:
        try:
            usable.append((row, _target(row, task)))
        except ValueError as error:
            rejected.append({**row.get("source", {}), "reason": str(error), "row": row})
    return usable, rejected


def label_names(config: Config, train: list[tuple[dict, object]]) -> list[str]:
    if config.task == "regression":
        return ["score"]
    if config.task == "token":
        return bio_labels(config.labels or {span["label"] for _, spans in train for span in spans})
    return config.labels or sorted({label for _, label in train})


def encode(tokenizer, pairs: list[tuple[dict, object]], task: str, labels: list[str], max_length: int) -> list[dict]:
    index = {label: i for i, label in enumerate(labels)}
    examples = []
    for row, target in pairs:
        encoded = tokenizer(last_user_turn(row["messages"]), truncation=True, max_length=max_length, return_offsets_mapping=True)
        offsets = encoded.pop("offset_mapping")
        if task == "token":
            encoded["labels"] = [IGNORE_INDEX if tag is None else index[tag] for tag in bio_tags(offsets, target)]
        elif task == "regression":
            encoded["labels"] = target
        elif target in index:
            encoded["labels"] = index[target]
        else:  # a validation/test label the train split never had: the head can't output it
            continue
        examples.append(dict(encoded))
    return examples


# --- models -----------------------------------------------------------------------------------


def _head_class(task: str):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    return AutoModelForTokenClassification if task == "token" else AutoModelForSequenceClassification


def new_model(recipe, labels: list[str], tokenizer, path: str | None = None):
    """The base model with a freshly initialised head for `labels` (seeded by the caller)."""
    import torch

    task = recipe.objective.task
    model = from_pretrained(
        _head_class(task), recipe.model, path, dtype=torch.float32, use_safetensors=True,
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
        problem_type="regression" if task == "regression" else
        ("single_label_classification" if task == "sequence" else None),
    )
    if model.config.pad_token_id is None:  # decoder heads pool the last non-padding token
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def read_labels(folder) -> list[str]:
    return json.loads((folder / LABELS_FILE).read_text(encoding="utf-8"))["labels"]


def load_trained(recipe, folder):
    """The trained classifier in a run's model/ folder: full weights, or base + LoRA adapter merged."""
    import torch

    if not is_adapter_folder(folder):
        return _head_class(recipe.objective.task).from_pretrained(str(folder), dtype=torch.float32, use_safetensors=True)
    from peft import PeftModel

    base = new_model(recipe, read_labels(folder), load_tokenizer(recipe.model, path=str(folder)))
    return PeftModel.from_pretrained(base, str(folder)).merge_and_unload()


def collator(tokenizer, task: str):
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    return DataCollatorForTokenClassification(tokenizer) if task == "token" else DataCollatorWithPadding(tokenizer)


# --- hooks ------------------------------------------------------------------------------------


def read_targets(run: RunDir, task: str) -> tuple[dict[str, list], list[dict]]:

    splits, rejected = {}, []
    for split in SPLITS:
        splits[split], bad = targets(run.read_split(split), task)
        rejected += [{"split": split, **item} for item in bad]
    return splits, rejected


def train(run: RunDir, resume: bool = False, callbacks: list | None = None, console: Console | None = None) -> dict:
    from datasets import Dataset
    from transformers import PrinterCallback, Trainer, set_seed

    console = console or Console(stderr=True)
    recipe = run.recipe()
    task = recipe.objective.task
    threads = configure_threads(recipe.training)
    bf16 = use_bf16(recipe)
    set_seed(recipe.seed)
    tokenizer = load_tokenizer(recipe.model)
    splits, rejected = read_targets(run, task)
    run.write_rejected("classify", rejected, console)
    if not splits["train"]:
        raise DomaintuneError(f"{run.data / 'train.jsonl'}: no row can be labelled for classify ({task}); "
                              f"see {run.data / 'classify_rejected.jsonl'}")
    labels = label_names(recipe.objective, splits["train"])
    train_set, validation_set = (
        Dataset.from_list(encode(tokenizer, splits[s], task, labels, recipe.data.max_tokens)) for s in ("train", "validation")
    )
    has_validation = len(validation_set) > 0
    model = get_method(recipe.method.name).apply(new_model(recipe, labels, tokenizer), recipe.method)
    parameters = count_parameters(model)
    console.print(f"[bold]classify ({task})[/], head method {recipe.method.train} on {recipe.model.name}: "
                  f"{parameters['trainable']:,} trainable of {parameters['total']:,} parameters "
                  f"({parameters['share']:.2%}) · {len(labels)} labels · {len(train_set)} train rows · {threads} thread(s)")
    # Rows are not packed here: each text is one example; padding to the batch's longest is all it costs.
    args = training_arguments(recipe, run, has_validation, bf16, include_num_input_tokens_seen="no",
                              train_sampling_strategy="group_by_length" if recipe.training.group_by_length else "random")
    trainer = atomic_trainer(Trainer)(
        model=model, args=args, train_dataset=train_set, eval_dataset=validation_set if has_validation else None,
        data_collator=collator(tokenizer, task), processing_class=tokenizer,
        callbacks=trainer_callbacks(run, recipe, args, has_validation, console, callbacks),
    )
    trainer.remove_callback(PrinterCallback)
    checkpoint = run.last_checkpoint(console) if resume else None
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    def save(folder: Path) -> None:
        trainer.save_model(str(folder))
        tokenizer.save_pretrained(str(folder))
        (folder / LABELS_FILE).write_text(json.dumps({"task": task, "labels": labels}, indent=2), encoding="utf-8")

    save_final(trainer, run, save)
    return run.write_training_summary({
        "method": recipe.method.name,
        "head_training": recipe.method.train,
        "task": task,
        "labels": labels,
        "global_step": trainer.state.global_step,
        "train_loss": output.training_loss,
        "best_eval_loss": trainer.state.best_metric,
        "train_rows": len(train_set),
        "validation_rows": len(validation_set),
        "rejected_rows": len(rejected),
        "parameters": parameters,
        "threads": threads,
        "runtime_seconds": output.metrics.get("train_runtime"),
    })


def predict(model, tokenizer, rows: list[dict], task: str, max_length: int, batch_size: int) -> list:
    """A label, a number, or a `[NAME - TYPE, ...]` answer per row."""
    import torch

    model.eval()
    labels = model.config.id2label
    outputs = []
    collate = collator(tokenizer, task)
    for start in range(0, len(rows), batch_size):
        texts = [last_user_turn(row["messages"]) for row in rows[start : start + batch_size]]
        encoded = [tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True) for text in texts]
        offsets = [item.pop("offset_mapping") for item in encoded]
        batch = collate([dict(item) for item in encoded])
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        if task == "regression":
            outputs += logits[:, 0].tolist()
        elif task == "sequence":
            outputs += [labels[int(i)] for i in logits.argmax(-1)]
        else:
            for text, offset, ids in zip(texts, offsets, logits.argmax(-1).tolist()):
                tags = [None if s == e else labels[i] for (s, e), i in zip(offset, ids)]
                outputs.append(answer_from_spans(text, spans_from_tags(offset, tags)))
    return outputs


def scores(task: str, predictions: list, references: list) -> tuple[dict, dict]:
    """(metrics, per-item statistics for the bootstrap)."""
    import numpy as np
    from sklearn.metrics import f1_score, r2_score

    if task == "regression":
        metrics = {"r2": float(r2_score(references, predictions)),
                   "mse": float(np.mean((np.array(predictions) - np.array(references)) ** 2))}
        return metrics, regression_item_stats(predictions, references)
    names = ["entity_f1"] if task == "token" else ["accuracy"]
    metrics = compute_metrics(names, predictions, references)
    if task == "sequence":
        metrics["macro_f1"] = float(f1_score(references, predictions, average="macro", zero_division=0))
    return metrics, metric_item_stats(names, predictions, references)


def regression_item_stats(predictions: list[float], references: list[float]) -> dict[str, ItemStats]:
    """MSE and R² from per-item (squared error, reference, squared reference): R² is recomputed on every
    resample against that resample's own variance, as r2_score computes it."""
    import numpy as np

    truth = np.asarray(references, dtype=float)
    components = np.stack([(np.asarray(predictions, dtype=float) - truth) ** 2, truth, truth**2])

    def r2(means: np.ndarray) -> np.ndarray:
        return 1 - means[0] / (means[2] - means[1] ** 2)

    return {"r2": ItemStats(components, r2), "mse": ItemStats(components[:1], lambda means: means[0], lower_is_better=True)}


def evaluate(run: RunDir, console: Console | None = None, harness: bool | None = None) -> dict:
    from transformers import set_seed

    console = console or Console(stderr=True)
    recipe = run.recipe()
    task = recipe.objective.task
    configure_threads(recipe.training)
    tokenizer = load_tokenizer(recipe.model, path=str(run.model))
    labels = read_labels(run.model)
    splits, _ = read_targets(run, task)  # rows that can't be labelled were listed when training
    test = [(row, target) for row, target in splits["test"] if task != "sequence" or target in labels]
    if not test:
        raise DomaintuneError(f"{run.data / 'test.jsonl'}: no labelled test rows to evaluate the classifier on")
    rows = [row for row, _ in test]
    references = [_reference(row, target, task) for row, target in test]
    size, batch = recipe.data.max_tokens, recipe.evaluation.batch_size

    started = time.perf_counter()
    tuned = predict(load_trained(recipe, run.model), tokenizer, rows, task, size, batch)
    tuned_seconds = round(time.perf_counter() - started, 1)
    if task == "token":  # the body with a head nobody trained: what the body alone knows
        set_seed(recipe.seed)
        base_name = "untrained head"
        base = predict(new_model(recipe, labels, tokenizer), tokenizer, rows, task, size, batch)
    elif task == "regression":
        mean = sum(target for _, target in splits["train"]) / len(splits["train"])
        base_name, base = f"training mean ({mean:.3g})", [mean] * len(rows)
    else:
        majority = Counter(target for _, target in splits["train"]).most_common(1)[0][0]
        base_name, base = f"majority class ({majority})", [majority] * len(rows)

    results: dict = {"task": task, "labels": labels, "n_test": len(rows), "models": {}}
    stats = {}
    for name, predictions, model in (("base", base, base_name), ("tuned", tuned, str(run.model))):
        metrics, stats[name] = scores(task, predictions, references)
        results["models"][name] = {"model": model, "metrics": metrics, "loss": {}}
    results["models"]["tuned"]["seconds"] = tuned_seconds
    if stats["tuned"]:
        results.update(paired_comparison(recipe, stats["base"], stats["tuned"]))
    if task == "sequence":
        results["errors"] = {"labels": {"base": label_confusion(base, references), "tuned": label_confusion(tuned, references)}}
    elif task == "token":
        results["errors"] = {"entities": {"base": entity_errors(base, references), "tuned": entity_errors(tuned, references)}}
    samples = [{"prompt": last_user_turn(row["messages"]), "reference": str(ref), "base": str(b), "tuned": str(t)}
               for row, ref, b, t in zip(rows, references, base, tuned)]
    return write_results(run, results, samples, console)


def _reference(row: dict, target, task: str):
    return answer_from_spans(last_user_turn(row["messages"]), target) if task == "token" else target


def export(run: RunDir, console: Console | None = None) -> dict[str, str]:
    """export/merged: the classifier with its head, tokenizer and label map; export/adapter too for LoRA."""
    import torch

    console = console or Console(stderr=True)
    recipe = run.recipe()
    written = {}
    if recipe.export.adapter and is_adapter_folder(run.model):
        adapter = run.export / "adapter"
        adapter.mkdir(parents=True, exist_ok=True)
        for name in (*PEFT_ADAPTER_FILES, LABELS_FILE):
            shutil.copy2(run.model / name, adapter / name)
        written["adapter"] = str(adapter)
    if recipe.export.merged:
        merged = run.export / "merged"
        model = load_trained(recipe, run.model).to(torch.bfloat16 if recipe.export.dtype == "bfloat16" else torch.float32)
        model.save_pretrained(str(merged), safe_serialization=True)
        load_tokenizer(recipe.model, path=str(run.model)).save_pretrained(str(merged))
        shutil.copy2(run.model / LABELS_FILE, merged / LABELS_FILE)
        written["merged"] = str(merged)
    for kind, path in written.items():
        console.print(f"Exported {kind}: {path}")
    return written
