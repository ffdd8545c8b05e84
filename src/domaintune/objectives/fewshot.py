"""Few-shot fine-tuning from a handful of labelled examples per class, compared with in-context
few-shot prompting of a causal LM on the same examples.

After `data prepare`, the train split keeps `shots` rows per label (seeded; the rest go to
data/fewshot_unused.jsonl, never silently lost). Two modes:
- `setfit` (an encoder such as minilm-l6): SetFit, contrastive pairs from the shots fine-tune the
  sentence encoder, then a logistic-regression head; the head is saved as safetensors, not pickle.
- `sft` (a causal LM): SFT on the shots with strong regularisation: at most `max_steps` steps,
  weight decay, validation every `eval_every` steps with early stopping; pair it with LoRA of small r
  and a low lr (examples/objective-fewshot-sft.yaml).
The report compares the tuned model with a k-shot prompt (the same shots, in turns) answered by the
causal LM (`prompt_model`, default the base model itself, or smollm2 for an encoder), on the test split.
"""
from __future__ import annotations

import json
import random
import shutil
from collections import defaultdict
from pathlib import Path

from rich.console import Console

from domaintune.config import EarlyStoppingConfig, ModelConfig
from domaintune.config.objectives import FewshotConfig
from domaintune.config.runtime import configure_threads, inference_device, use_bf16
from domaintune.core.answers import answer_label
from domaintune.core.chat import last_user_turn, prompt_text, render
from domaintune.core.errors import DomaintuneError
from domaintune.data.split import sample_rows
from domaintune.evaluation.base_vs_tuned import write_results
from domaintune.evaluation.bootstrap import metric_item_stats, paired_comparison
from domaintune.evaluation.errors_analysis import label_confusion
from domaintune.evaluation.metrics import accuracy
from domaintune.export.exporter import export_causal_lm
from domaintune.models.generation import open_generator
from domaintune.models.loading import load_sentence_transformer
from domaintune.models.registry import resolve_model_path
from domaintune.storage.jsonl import read_jsonl, write_jsonl
from domaintune.storage.rundir import RunDir
from domaintune.training.trainer import train_causal_lm

SUMMARY = "a few labelled examples per class: SetFit on an encoder or regularised SFT, vs k-shot prompting"
Config = FewshotConfig  # the registry and the recipe know an objective by its Config
HEAD_FILE = "setfit_head.safetensors"
LABELS_FILE = "labels.json"
PICKLED_HEAD = "model_head.pkl"  # how SetFit itself saves a head


# --- data ---------------------------------------------------------------------------------------


def sample_shots(rows: list[dict], shots: int, seed: int) -> tuple[list[dict], list[dict]]:
    """`shots` rows per label (all of a rarer label), and the rows left over."""
    by_label: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_label[row["label"]].append(row)
    rng = random.Random(seed)
    chosen = []
    for label in sorted(by_label):
        chosen += rng.sample(by_label[label], min(shots, len(by_label[label])))
    picked = {id(row) for row in chosen}
    return chosen, [row for row in rows if id(row) not in picked]


def after_prepare(data_dir: Path, config: Config) -> None:
    train = read_jsonl(Path(data_dir) / "train.jsonl")
    if any(row.get("label") is None for row in train):
        raise DomaintuneError(f"{Path(data_dir) / 'train.jsonl'}: objective fewshot needs labelled rows (text, label)")
    chosen, unused = sample_shots(train, config.shots, config.seed)
    write_jsonl(Path(data_dir) / "train.jsonl", chosen)
    write_jsonl(Path(data_dir) / "fewshot_unused.jsonl", unused)


def is_encoder(model_path: str) -> bool:
    from transformers import AutoConfig

    return not any(name.endswith("ForCausalLM") for name in AutoConfig.from_pretrained(model_path).architectures or [])


def mode(recipe) -> str:
    if recipe.objective.mode != "auto":
        return recipe.objective.mode
    return "setfit" if is_encoder(resolve_model_path(recipe.model.name)) else "sft"


# --- SetFit -------------------------------------------------------------------------------------


def _accuracy(predictions, references) -> dict:
    # A function, not "accuracy": SetFit would fetch that metric from the hub.
    return {"accuracy": float(sum(int(p == r) for p, r in zip(predictions, references))) / max(len(references), 1)}


def save_setfit(model, folder: Path, labels: list[str]) -> None:
    """The encoder as a sentence-transformers folder and the logistic-regression head as safetensors."""
    import torch
    from safetensors.torch import save_file

    model.model_body.save_pretrained(str(folder), safe_serialization=True)
    head = model.model_head
    save_file({"coef": torch.tensor(head.coef_).contiguous(), "intercept": torch.tensor(head.intercept_).contiguous()},
              str(folder / HEAD_FILE))
    (folder / LABELS_FILE).write_text(json.dumps({"labels": labels}), encoding="utf-8")


def load_setfit(folder: Path):
    import numpy as np
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer
    from setfit import SetFitModel
    from sklearn.linear_model import LogisticRegression

    labels = json.loads((folder / LABELS_FILE).read_text(encoding="utf-8"))["labels"]
    tensors = load_file(str(folder / HEAD_FILE))
    head = LogisticRegression()
    head.coef_, head.intercept_ = tensors["coef"].numpy(), tensors["intercept"].numpy()
    head.classes_ = np.arange(len(labels))
    head.n_features_in_ = head.coef_.shape[1]
    body = SentenceTransformer(str(folder), device=inference_device())
    return SetFitModel(model_body=body, model_head=head, labels=labels)


def setfit_model(config: ModelConfig, labels: list[str]):
    """SetFit from the recipe's encoder and a fresh logistic-regression head. Not SetFitModel.from_pretrained:
    it unpickles a model_head.pkl found with the model (running whatever code the pickle names) and
    drops model.revision and trust_remote_code."""
    from setfit import SetFitModel
    from sklearn.linear_model import LogisticRegression

    path = resolve_model_path(config.name)
    if (Path(path) / PICKLED_HEAD).exists():
        raise DomaintuneError(
            f"model.name: {path} holds {PICKLED_HEAD}, a pickled SetFit head; loading a pickle runs any code it "
            f"carries, so domaintune refuses it. fewshot trains a fresh head anyway: delete {PICKLED_HEAD} or point "
            "model.name at the encoder alone."
        )
    return SetFitModel(model_body=load_sentence_transformer(config, path), model_head=LogisticRegression(), labels=labels)


def train_setfit(run: RunDir, recipe, console: Console, callbacks: list | None = None) -> dict:
    from datasets import Dataset
    from setfit import Trainer, TrainingArguments

    if recipe.method.name != "full":
        raise DomaintuneError(f"objective fewshot (setfit): SetFit fine-tunes the whole encoder; set method.name: full, "
                              f"not {recipe.method.name}")
    threads = configure_threads(recipe.training)
    train_rows, validation_rows = run.read_split("train"), run.read_split("validation")
    labels = sorted({row["label"] for row in train_rows})
    index = {label: i for i, label in enumerate(labels)}
    as_set = lambda rows: Dataset.from_dict({"text": [last_user_turn(r["messages"]) for r in rows], "label": [index[r["label"]] for r in rows]})  # noqa: E731
    model = setfit_model(recipe.model, labels)
    training = recipe.training
    args = TrainingArguments(
        output_dir=str(run.checkpoints), batch_size=training.batch_size, num_epochs=max(1, round(training.epochs)),
        max_steps=training.max_steps, num_iterations=recipe.objective.iterations, body_learning_rate=training.lr,
        seed=recipe.seed, max_length=recipe.data.max_tokens, report_to="none", show_progress_bar=False,
        eval_strategy="no", save_strategy="no",
    )
    validation = [row for row in validation_rows if row["label"] in index]
    console.print(f"[bold]fewshot (SetFit)[/] on {recipe.model.name}: {len(train_rows)} shots over {len(labels)} labels · "
                  f"{threads} thread(s)")
    trainer = Trainer(model=model, args=args, train_dataset=as_set(train_rows),
                      eval_dataset=as_set(validation) if validation else None, metric=_accuracy,
                      callbacks=callbacks)
    trainer.train()
    save_setfit(model, run.model, labels)
    summary = {"method": recipe.method.name, "mode": "setfit", "labels": labels, "train_rows": len(train_rows),
               "global_step": trainer.state.global_step if hasattr(trainer, "state") else None, "threads": threads}
    if validation:
        summary["validation_accuracy"] = trainer.evaluate()["accuracy"]
    return run.write_training_summary(summary)


# --- hooks --------------------------------------------------------------------------------------


def regularised(recipe):
    """The recipe as few-shot SFT trains it: capped steps, weight decay, early stopping on validation."""
    config, training = recipe.objective, recipe.training
    steps = config.max_steps if training.max_steps < 0 else min(training.max_steps, config.max_steps)
    training = training.model_copy(update={
        "max_steps": steps, "weight_decay": max(training.weight_decay, config.weight_decay),
        "eval_every": config.eval_every, "save_every": config.eval_every,
        "early_stopping": training.early_stopping or EarlyStoppingConfig(patience=2),
    })
    return recipe.model_copy(update={"training": training})


def train(run: RunDir, resume: bool = False, callbacks: list | None = None, console: Console | None = None) -> dict:
    console = console or Console(stderr=True)
    recipe = run.recipe()
    if mode(recipe) == "setfit":
        return train_setfit(run, recipe, console, callbacks)
    tight = regularised(recipe)
    console.print(f"fewshot SFT: at most {tight.training.max_steps} steps, weight decay {tight.training.weight_decay}, "
                  f"early stopping every {tight.training.eval_every} steps")
    return train_causal_lm(run, resume=resume, callbacks=callbacks, console=console, recipe=tight)


def kshot_prompts(tokenizer, shots: list[dict], rows: list[dict], labels: list[str]) -> list[str]:
    """A conversation per test row: the shots as question/answer turns (labels interleaved), then the row."""
    by_label = defaultdict(list)
    for shot in shots:
        by_label[shot["label"]].append(shot)
    ordered = [group[i] for i in range(max(map(len, by_label.values()))) for group in by_label.values() if i < len(group)]
    system = {"role": "system", "content": f"Classify the text. Answer with one of: {', '.join(labels)}."}
    turns = [turn for shot in ordered for turn in ({"role": "user", "content": last_user_turn(shot["messages"])},
                                                    {"role": "assistant", "content": shot["label"]})]
    return [render(tokenizer, [system, *turns, {"role": "user", "content": last_user_turn(row["messages"])}], add_generation_prompt=True)
            for row in rows]


def evaluate(run: RunDir, console: Console | None = None, harness: bool | None = None) -> dict:
    import time

    from sklearn.metrics import f1_score

    console = console or Console(stderr=True)
    recipe = run.recipe()
    configure_threads(recipe.training)
    bf16, settings = use_bf16(recipe), recipe.evaluation
    shots = run.read_split("train")
    labels = sorted({row["label"] for row in shots})
    rows = sample_rows([row for row in run.read_split("test") if row.get("label") in labels], settings.max_samples)
    if not rows:
        raise DomaintuneError(f"{run.data / 'test.jsonl'}: no test rows with a label seen in the shots")
    references = [row["label"] for row in rows]
    answer_tokens = min(settings.max_new_tokens, 16)  # a label is a few tokens

    started = time.perf_counter()
    if mode(recipe) == "setfit":
        tuned = [str(label) for label in load_setfit(run.model).predict([last_user_turn(row["messages"]) for row in rows])]
        prompt_name = recipe.objective.prompt_model or "smollm2-135m-instruct"
    else:
        generator = open_generator(recipe.model, recipe.inference, model_dir=run.model, bf16=bf16, exact=True,
                                   console=console)
        tuned = generator.generate([prompt_text(generator.tokenizer, row["messages"]) for row in rows], answer_tokens,
                                   settings.batch_size)
        prompt_name = recipe.objective.prompt_model or recipe.model.name
    tuned_seconds = round(time.perf_counter() - started, 1)
    prompt_model = ModelConfig(name=prompt_name)
    console.print(f"In-context baseline: {len(shots)}-shot prompts to {prompt_name} on {len(rows)} test rows...")
    generator = open_generator(prompt_model, recipe.inference, bf16=bf16, exact=True, console=console)
    started = time.perf_counter()
    prompted = generator.generate(kshot_prompts(generator.tokenizer, shots, rows, labels), answer_tokens,
                                  settings.batch_size)
    prompted_seconds = round(time.perf_counter() - started, 1)

    results: dict = {"mode": mode(recipe), "shots": len(shots), "labels": labels, "n_test": len(rows), "models": {}}
    stats = {}
    for name, predictions, model, seconds in (("base", prompted, f"{prompt_name}, {len(shots)}-shot prompt", prompted_seconds),
                                              ("tuned", tuned, str(run.model), tuned_seconds)):
        metrics = accuracy(predictions, references)
        metrics["macro_f1"] = float(f1_score([answer_label(r) for r in references], [answer_label(p) for p in predictions],
                                             average="macro", zero_division=0))
        stats[name] = metric_item_stats(["accuracy"], predictions, references)
        results["models"][name] = {"model": model, "metrics": metrics, "loss": {}, "seconds": seconds}
    results.update(paired_comparison(recipe, stats["base"], stats["tuned"]))
    results["errors"] = {"labels": {"base": label_confusion(prompted, references), "tuned": label_confusion(tuned, references)}}
    samples = [{"prompt": last_user_turn(row["messages"]), "reference": ref, "base": b, "tuned": t}
               for row, ref, b, t in zip(rows, references, prompted, tuned)]
    return write_results(run, results, samples, console)


def export(run: RunDir, console: Console | None = None) -> dict[str, str]:
    console = console or Console(stderr=True)
    recipe = run.recipe()
    if mode(recipe) != "setfit":
        return export_causal_lm(run, recipe, console)
    target = run.export / "setfit"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(run.model, target, ignore=shutil.ignore_patterns("training.json"))
    console.print(f"Exported SetFit model (encoder + {HEAD_FILE}): {target}")
    return {"setfit": str(target)}
