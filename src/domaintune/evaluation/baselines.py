"""The cheapest alternatives to tuning, scored on the same test rows as the base and tuned models, so
the verdict is "tuned beat the strongest of them" and not "tuned beat a base model that lost on format".

- the most frequent answer in train, given to every test row (the majority label; "No entities found");
- the base model with k seeded train rows as earlier chat turns (k-shot), as many as fit the context;
- for a closed set of labels: each label scored by the model's likelihood, the best one the answer
  (constrained scoring, base and tuned alike), and free answers read leniently (the one allowed label
  the answer mentions) beside the strict first-line reading.
"""
from __future__ import annotations

import random
import re
from collections import Counter

from domaintune.core.chat import encode_conversation, final_answer, prompt_text, with_examples
from domaintune.evaluation import bootstrap
from domaintune.evaluation.metric_choice import conversation_rows
from domaintune.evaluation.metrics import compute_metrics
from domaintune.models.inference import example_losses

MAJORITY, KSHOT = "majority answer", "base k-shot"
LENIENT, CONSTRAINED = "lenient", "constrained"


def majority_answer(train: list[dict]) -> str | None:
    answers = Counter(final_answer(row) for row in conversation_rows(train))
    return answers.most_common(1)[0][0] if answers else None


def kshot_examples(tokenizer, train: list[dict], rows: list[dict], shots: int, seed: int, context: int,
                   max_new_tokens: int) -> list[dict]:
    """Up to `shots` seeded train rows, fewer if the longest test prompt would not fit the context with them."""
    pool = conversation_rows(train)
    examples = random.Random(seed).sample(pool, min(shots, len(pool)))

    def longest(examples: list[dict]) -> int:
        return max(len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
                   for prompt in kshot_prompts(tokenizer, rows, examples))

    while examples and longest(examples) + max_new_tokens > context:
        examples.pop()
    return examples


def lenient_label(answer: str, labels: list[str]) -> str:
    """The one allowed label the answer mentions (as a whole word, any case); otherwise the answer as is,
    read strictly. "The sentiment is positive." reads as "positive"; an answer naming two labels does not."""
    found = [label for label in labels if re.search(rf"(?<!\w){re.escape(label)}(?!\w)", answer, re.IGNORECASE)]
    return found[0] if len(found) == 1 else answer


def constrained_answers(model, tokenizer, rows: list[dict], labels: list[str], batch_size: int, bf16: bool) -> list[str]:
    """Per row, the label with the highest likelihood as the answer (its tokens and the end of the turn)."""
    candidates = [encode_conversation(tokenizer, {"messages": row["messages"][:-1] + [
        {"role": "assistant", "content": label}]}, max_length=None) for row in rows for label in labels]
    negative_log_likelihood = example_losses(model, tokenizer, candidates, batch_size, bf16)[0]
    best = negative_log_likelihood.reshape(len(rows), len(labels)).argmin(axis=1)
    return [labels[index] for index in best]


def scored(metrics: list[str], predictions: list[str], references: list[str], reading: str | None = None
           ) -> tuple[dict[str, float], dict[str, bootstrap.ItemStats]]:
    """Metric values and per-item statistics, the keys marked with the reading ("accuracy (lenient)")."""
    suffix = f" ({reading})" if reading else ""
    values = compute_metrics(metrics, predictions, references)
    stats = bootstrap.metric_item_stats(metrics, predictions, references)
    return ({f"{key}{suffix}": value for key, value in values.items()},
            {f"{key}{suffix}": value for key, value in stats.items()})


def label_readings(model, tokenizer, rows: list[dict], answers: list[str], labels: list[str], metrics: list[str],
                   batch_size: int, bf16: bool) -> tuple[dict[str, float], dict[str, bootstrap.ItemStats]]:
    """A model's lenient reading of its free answers and its constrained answers, scored like the strict ones."""
    references = [final_answer(row) for row in rows]
    values, stats = scored(metrics, [lenient_label(answer, labels) for answer in answers], references, LENIENT)
    if model is not None:
        constrained = constrained_answers(model, tokenizer, rows, labels, batch_size, bf16)
        more_values, more_stats = scored(metrics, constrained, references, CONSTRAINED)
        values.update(more_values)
        stats.update(more_stats)
    return values, stats


def primary_key(metrics: list[str], stats: dict[str, bootstrap.ItemStats]) -> str | None:
    """The statistic the verdict is about: the recipe's first metric (entity_f1 for entity extraction)."""
    return next((name for name in metrics if name in stats), None)


def strongest_baseline(metric: str, stats: dict[str, dict[str, bootstrap.ItemStats]], confidence: float,
                       resamples: int, seed: int, tuned_reading: str | None = None,
                       labels: list[str] | None = None) -> dict | None:
    """Tuned (its free answers, or with `tuned_reading` constrained its likeliest allowed answers) against
    every baseline on `metric` (each model's strict, lenient and constrained readings), which baseline was
    the strongest, and where tuned did not clearly beat it, advice on what would help."""
    tuned_key = f"{metric} ({tuned_reading})" if tuned_reading else metric
    tuned = stats.get("tuned", {}).get(tuned_key)
    if tuned is None:
        return None
    candidates = []
    for name, model_stats in stats.items():
        if name == "tuned":
            continue
        for reading in (None, LENIENT, CONSTRAINED):
            key = f"{metric} ({reading})" if reading else metric
            if key in model_stats:
                comparison = bootstrap.paired_difference(model_stats[key], tuned, confidence, resamples, seed)
                candidates.append({"baseline": name, "reading": reading or "strict", "value": comparison["base"],
                                   "tuned": comparison["tuned"], "delta": comparison["delta"], "low": comparison["low"],
                                   "high": comparison["high"], "verdict": comparison["verdict"]})
    if not candidates:
        return None
    lower_is_better = tuned.lower_is_better
    strongest = (min if lower_is_better else max)(candidates, key=lambda candidate: candidate["value"])
    result = {"metric": metric, "tuned_reading": tuned_reading or "strict", "candidates": candidates,
              "strongest": strongest}
    if strongest["verdict"] != bootstrap.BETTER:
        result["advice"] = advice(metric, strongest, labels)
    return result


def collapsed_answer(answers: list[str], least_rows: int = 5) -> str | None:
    """The one answer a model gave to every row, when it did so on enough rows to mean something."""
    distinct = {answer.strip() for answer in answers}
    return distinct.pop() if len(answers) >= least_rows and len(distinct) == 1 else None


def collapse_advice(answer: str, balanced: bool = False) -> str:
    """`balanced`: the run already repeated the rarer answers' rows (data.balance_labels)."""
    remedy = ("the rarer answers' rows were already repeated (data.balance_labels), so what is left is more steps, "
              "more rows of the rarer answers, or a larger base model (`domaintune select`). " if balanced else
              "with a closed answer set, data.balance_labels repeats the rarer answers' rows. ")
    return (f"The tuned model gave the same answer, {answer[:60]!r}, to every test row: it learned the most common "
            "answer, not the task. More training steps often get past this (the answer's prior is what a short "
            f"run learns first); {remedy}")


def near_copy_advice(tuned_answers: list[str], copies: list[str | None]) -> str | None:
    """Where a fifth or more of the scored rows (and 3 or more) have a training row with nearly the same words
    and another answer (`copies`: data.contamination.near_copy_answers), what that means for the verdict."""
    pairs = [(answer.strip(), copy) for answer, copy in zip(tuned_answers, copies) if copy is not None]
    if len(pairs) < max(3, 0.2 * len(copies)):
        return None
    echoed = sum(answer == copy for answer, copy in pairs)
    return (f"{len(pairs)} of the {len(copies)} test rows scored have a training row with nearly the same words and "
            f"another answer, and tuned gave {echoed} of them that training row's answer: what tells such rows apart "
            "is a detail (a name left out, a title paired with another), and a short run learns what the rows look "
            "like before it. More rows that differ only in that detail would help (the data report lists such rows "
            "under contamination). ")


def advice(metric: str, strongest: dict, labels: list[str] | None) -> str:
    """Why tuning may not have won, and what would help, in words for the report."""
    lead = (f"Tuned is not clearly better than the strongest baseline ({strongest['baseline']}, "
            f"{strongest['reading']}) on {metric}.")
    chance = 1 / len(labels) if labels and metric in ("accuracy", "choice_accuracy") else None
    if chance is not None and strongest["low"] <= 0 and strongest["tuned"] <= chance + 0.1:
        return (f"{lead} It scores {strongest['tuned']:.2f}, about chance ({chance:.2f} for {len(labels)} answers): the "
                "answers likely need knowledge the base model lacks, which a few hundred rows cannot teach. What "
                "would help: a larger base model (`domaintune select` compares candidates), continued pretraining on "
                "domain text (objective pretrain, then this recipe), or the passages that hold the answers in the "
                "prompt.")
    return (f"{lead} What would help: more test rows (a narrow interval needs more items than a wide one), more "
            "training rows or steps (`domaintune estimate` prices them), or a larger base model (`domaintune "
            "select`); the error analysis below shows where tuned fails.")


def kshot_prompts(tokenizer, rows: list[dict], examples: list[dict]) -> list[str]:
    return [prompt_text(tokenizer, with_examples(row, examples)["messages"], row.get("tools")) for row in rows]


def majority_scores(answer: str, rows: list[dict], metrics: list[str]) -> tuple[dict[str, float], dict]:
    references = [final_answer(row) for row in rows]
    return scored(metrics, [answer] * len(rows), references)

