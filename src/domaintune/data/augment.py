"""Augmentation of the train split: reworded prompts with the same answer.

Rule-based methods change the last user turn only and never touch a word that the answer
repeats (an entity, a number), so the answer stays right: `word_dropout` drops words,
`word_swap` swaps two neighbours, `template` rewords the request with `augment.templates`.
`paraphrase` asks a local model to reword it and keeps the result only if every answer word of
the prompt survives. At most `max_share` of the train split is added, from rows picked with
the seed; each added row's source carries `augmented: <method>`. Raw text rows are left as
they are.
"""
from __future__ import annotations

import random
import re
from typing import Callable

from domaintune.config import AugmentConfig
from domaintune.data.cleaning import content_key
from domaintune.data.text_generator import Generate

_WORD = re.compile(r"\S+")
PARAPHRASE_PROMPT = (
    "Rewrite the following text with different wording. Keep every name, number and fact exactly as written. "
    "Reply with the rewritten text only.\n\n{prompt}"
)


def _bare(word: str) -> str:
    return word.strip(".,;:()[]\"'").lower()


def _protected(row: dict) -> set[str]:
    """Words of the answer: changing them in the prompt could make the answer wrong."""
    return {_bare(word) for word in _WORD.findall(row["messages"][-1]["content"])}


def _is_protected(word: str, protected: set[str]) -> bool:
    return _bare(word) in protected


def word_dropout(prompt: str, protected: set[str], rng: random.Random, rate: float) -> str:
    words = prompt.split(" ")
    kept = [w for w in words if _is_protected(w, protected) or rng.random() >= rate]
    return " ".join(kept)


def word_swap(prompt: str, protected: set[str], rng: random.Random) -> str:
    words = prompt.split(" ")
    free = [i for i in range(len(words) - 1) if not (_is_protected(words[i], protected) or _is_protected(words[i + 1], protected))]
    if not free:
        return prompt
    i = rng.choice(free)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def _with_prompt(row: dict, prompt: str, method: str) -> dict:
    messages = [dict(message) for message in row["messages"]]
    messages[-2]["content"] = prompt
    return {**row, "messages": messages, "source": {**row["source"], "augmented": method}}


def keeps_answer_words(original: str, rewritten: str, protected: set[str]) -> bool:
    """Every answer word that the original prompt contains is still in the rewritten one."""
    needed = {_bare(word) for word in _WORD.findall(original)} & protected
    return needed <= {_bare(word) for word in _WORD.findall(rewritten)}


def augment_rows(
    train: list[dict], config: AugmentConfig, seed: int, paraphraser: Callable[[], Generate] | None = None
) -> tuple[list[dict], dict[str, int]]:
    """New rows for the train split (not including the originals) and how many each method made."""
    # Rewriting means the question right before the answer; a tool result or a tool call there is left alone.
    chats = [row for row in train if "messages" in row and len(row["messages"]) > 1
             and row["messages"][-2]["role"] == "user" and isinstance(row["messages"][-2].get("content"), str)]
    budget = int(config.max_share * len(train))
    if not config.methods or not chats or budget == 0:
        return [], {}
    rng = random.Random(seed)
    picks = rng.sample(chats, min(budget, len(chats)))
    seen = {content_key(row) for row in train}
    added: list[dict] = []
    counts = dict.fromkeys(config.methods, 0)
    # Rows go to the methods in turn, so each gets its share of the budget.
    by_method = {method: picks[i :: len(config.methods)] for i, method in enumerate(config.methods)}
    for method, rows in by_method.items():
        if method == "paraphrase":
            candidates = _paraphrase(rows, paraphraser)
        else:
            candidates = [(row, _rule(method, row, rng, config)) for row in rows]
        for row, prompt in candidates:
            original = row["messages"][-2]["content"]
            if not prompt or prompt == original or not keeps_answer_words(original, prompt, _protected(row)):
                continue
            new = _with_prompt(row, prompt, method)
            if content_key(new) not in seen:  # never add a copy of a row the split already has
                seen.add(content_key(new))
                added.append(new)
                counts[method] += 1
    return added, counts


def _rule(method: str, row: dict, rng: random.Random, config: AugmentConfig) -> str:
    prompt, protected = row["messages"][-2]["content"], _protected(row)
    if method == "word_dropout":
        return word_dropout(prompt, protected, rng, config.word_dropout)
    if method == "word_swap":
        return word_swap(prompt, protected, rng)
    return rng.choice(config.templates).replace("{prompt}", prompt)


def _paraphrase(rows: list[dict], paraphraser: Callable[[], Generate] | None) -> list[tuple[dict, str]]:
    if not rows or paraphraser is None:
        return []
    generate = paraphraser()
    conversations = [
        [{"role": "user", "content": PARAPHRASE_PROMPT.format(prompt=row["messages"][-2]["content"])}] for row in rows
    ]
    return list(zip(rows, (reply.strip() for reply in generate(conversations))))
