"""`evaluation.metrics: auto`: the metrics that fit the task, read from the prepared rows, with the
reason in words for the report."""
from __future__ import annotations

import re
from collections import Counter

from domaintune.core.answers import MAX_LABEL_WORDS, MAX_LABELS, answer_label
from domaintune.core.chat import final_answer
from domaintune.core.entities import NO_ENTITIES, list_items, split_item

SHORT_ANSWER_WORDS = 12  # median reference length up to which exact match is a fair test
SKEWED_SHARE = 0.6  # from this share of one label, accuracy mostly measures how often a model says it
_OPTION_LETTER = re.compile(r"^\(?[A-J]\)?\.?$")


def conversation_rows(rows: list[dict]) -> list[dict]:
    return [row for row in rows if "messages" in row]


def answer_stops(setting: list[str] | None, train: list[dict]) -> list[str]:
    """Where generated answers end (`evaluation.stop`; null: a line break when no train answer spans lines)."""
    if setting is not None:
        return setting
    answers = [final_answer(row).strip() for row in conversation_rows(train)]
    return ["\n"] if answers and not any("\n" in answer for answer in answers) else []


def closed_label_set(train: list[dict], test: list[dict]) -> list[str] | None:
    """The allowed answers when the task has a closed set of short labels (labelled rows; yes/no; option
    letters): the distinct answers of train, as written, when every test answer is one of them."""
    train, test = conversation_rows(train), conversation_rows(test)
    if not train or not test:
        return None
    written: dict[str, str] = {}  # label as read by `accuracy` -> its most common spelling in train
    for answer, _ in Counter(final_answer(row).strip() for row in train).most_common():
        written.setdefault(answer_label(answer), answer)
    if len(written) > MAX_LABELS or any(len(label.split()) > MAX_LABEL_WORDS for label in written):
        return None
    if any(answer_label(final_answer(row)) not in written for row in test):
        return None
    return sorted(written.values())


def majority_share(rows: list[dict]) -> float:
    """The most frequent answer's share of the rows (answers read as `accuracy` reads them)."""
    counts = Counter(answer_label(final_answer(row)) for row in rows)
    return max(counts.values()) / len(rows) if rows else 0.0


def is_entity_answer(answer: str) -> bool:
    answer = answer.strip()
    if answer == NO_ENTITIES:
        return True
    items = list_items(answer)
    return answer.startswith("[") and bool(items) and all(split_item(item) for item in items)


def choose_metrics(requested: list[str] | str, train: list[dict], test: list[dict]) -> tuple[list[str], str]:
    """The metric names to compute and why. An explicit list is kept as the recipe gave it."""
    if requested != "auto":
        return list(requested), "as listed in the recipe (evaluation.metrics)"
    answers = [final_answer(row) for row in conversation_rows(test) or conversation_rows(train)]
    if not answers:
        return [], "no conversation rows to answer: the comparison is on loss and perplexity"
    labels = closed_label_set(train, test)
    if labels and all(_OPTION_LETTER.match(label.strip()) for label in labels):
        return ["choice_accuracy"], (f"the answers are option letters ({', '.join(labels)}): accuracy over the letter "
                                     "each answer picks")
    if labels:
        share = majority_share(conversation_rows(train) or conversation_rows(test))
        if share >= SKEWED_SHARE:
            return ["macro_f1", "accuracy"], (
                f"the answers form a closed set of {len(labels)} labels, {share:.0%} of them one label: macro-F1 first "
                "(the verdict's metric), since always answering that label already scores "
                f"{share:.0%} accuracy, then accuracy")
        return ["accuracy", "macro_f1"], (f"the answers form a closed set of {len(labels)} labels: accuracy, and "
                                          "macro-F1, which a model always giving the majority label cannot score well on")
    entity_share = sum(map(is_entity_answer, answers)) / len(answers)
    if entity_share >= 0.9:
        return ["entity_f1", "exact_match"], ("the answers are [NAME - TYPE, ...] lists: entity precision, recall and "
                                              "F1 (micro, and per type in the error analysis), and exact match")
    words = sorted(len(answer.split()) for answer in answers)
    median = words[len(words) // 2]
    if median <= SHORT_ANSWER_WORDS:
        return ["exact_match", "token_f1"], f"short free-text answers (median {median} words): exact match and token F1"
    return ["rouge_l", "token_f1"], f"long free-text answers (median {median} words): ROUGE-L and token F1"

