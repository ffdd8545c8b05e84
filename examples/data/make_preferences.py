"""Make the preference examples from the quickstart's financial NER rows (loan-ner-300.jsonl).

The correct bracketed entity list is the best answer; worse answers are the list with an entity's
type swapped or an entity dropped, and a prose answer that ignores the format. Writes
loan-prefs-pairwise.jsonl, loan-prefs-ranking.jsonl (best-first) and loan-prefs-rating.jsonl (1-5).
Run: python examples/data/make_preferences.py
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).parent
ROWS = 80  # the shortest rows with entities: small enough for CPU examples
TYPES = ("PERSON", "ORGANIZATION", "LOCATION")
ENTITY = re.compile(r"(.+?) - (PERSON|ORGANIZATION|LOCATION)")


def entities(answer: str) -> list[tuple[str, str]]:
    return [ENTITY.fullmatch(part.strip()).groups() for part in answer.strip("[]").split(", ")]


def bracketed(items: list[tuple[str, str]]) -> str:
    return "[" + ", ".join(f"{name} - {kind}" for name, kind in items) + "]"


def wrong_type(items, rng):
    index = rng.randrange(len(items))
    name, kind = items[index]
    return bracketed(items[:index] + [(name, rng.choice([t for t in TYPES if t != kind]))] + items[index + 1 :])


def prose(items, rng):
    names = ", ".join(name for name, _ in items)
    return rng.choice(["The text mentions {}.", "I found these names: {}.", "Entities: {} (types unclear)."]).format(names)


def main() -> None:
    rng = random.Random(7)
    source = [json.loads(line) for line in (HERE / "loan-ner-300.jsonl").read_text(encoding="utf-8").splitlines()]
    usable = [row for row in source if row["messages"][-1]["content"].startswith("[")
              and all(ENTITY.fullmatch(p.strip()) for p in row["messages"][-1]["content"].strip("[]").split(", "))]
    usable = sorted(usable, key=lambda row: len(row["messages"][1]["content"]))[:ROWS]
    pairwise, ranking, rating = [], [], []
    for row in usable:
        prompt = row["messages"][:-1]
        best = row["messages"][-1]["content"]
        items = entities(best)
        typo, talk = wrong_type(items, rng), prose(items, rng)
        pairwise.append({"prompt": prompt, "chosen": best, "rejected": rng.choice([typo, talk])})
        ranking.append({"prompt": prompt, "responses": [best, typo, talk]})
        rating += [{"prompt": prompt, "response": best, "score": 5},
                   {"prompt": prompt, "response": typo, "score": 2},
                   {"prompt": prompt, "response": talk, "score": 1}]
    for name, rows in (("pairwise", pairwise), ("ranking", ranking), ("rating", rating)):
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (HERE / f"loan-prefs-{name}.jsonl").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
