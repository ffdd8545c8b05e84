"""Preference data: which of two answers to the same prompt people like better.

Three input formats become one canonical row shape, so the whole pipeline (normalising, PII,
filters, dedup, the grouped split) treats them like any conversation:

- `pairwise` (prompt, chosen, rejected) and `ranking` (prompt, responses best-first) become
  {"messages": prompt turns + the best answer, "worse": [worse answers, best-first]};
- `rating` (prompt, response, score) becomes {"messages": prompt turns + the response, "score": x}.

The prompt is everything before the answer, so the split's grouping by prompt keeps all pairs of
one prompt in one split. Pairs are made when a split is read (`preference_pairs`): a ranking of n
answers gives all n·(n-1)/2 ordered pairs, rated answers of one prompt pair up wherever their
scores differ, and `kto_examples` labels answers desirable or not for KTO.
"""
from __future__ import annotations

from itertools import combinations

from domaintune.data.readers import json_type

PREFERENCE_FORMATS: dict[str, tuple[str, ...]] = {
    "pairwise": ("prompt", "chosen", "rejected"),
    "ranking": ("prompt", "responses"),
    "rating": ("prompt", "response", "score"),
}


def to_preference_row(data: dict, fmt: str, column, row_error) -> dict:
    """A canonical preference row from one input row; `column(name)` is the user's column name and
    `row_error(reason)` the exception that rejects the row."""
    prompt = _prompt(data, column("prompt"), row_error)
    if fmt == "pairwise":
        chosen = _answer(data, column("chosen"), row_error)
        rejected = _answer(data, column("rejected"), row_error)
        if chosen.strip() == rejected.strip():
            raise row_error(f"{column('chosen')!r} and {column('rejected')!r} are the same answer: nothing to prefer")
        answers = [chosen, rejected]
    elif fmt == "ranking":
        key = column("responses")
        responses = data.get(key)
        if not isinstance(responses, list):
            raise row_error(f"missing column {key!r}" if key not in data else f"{key}: expected a list of answers, got {json_type(responses)}")
        if len(responses) < 2:
            raise row_error(f"{key}: a ranking needs at least 2 answers, got {len(responses)}")
        answers = [_answer({key: item}, key, row_error, where=f"{key}[{index}]") for index, item in enumerate(responses)]
        if len({answer.strip() for answer in answers}) < len(answers):
            raise row_error(f"{key}: the same answer appears twice in the ranking")
    else:
        score = data.get(column("score"))
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise row_error(f"missing column {column('score')!r}" if column("score") not in data
                            else f"column {column('score')!r}: expected a number, got {json_type(score)}")
        return {"messages": prompt + [_assistant(_answer(data, column("response"), row_error))], "label": None, "score": float(score)}
    return {"messages": prompt + [_assistant(answers[0])], "label": None, "worse": answers[1:]}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _prompt(data: dict, key: str, row_error) -> list[dict]:
    """Plain text becomes one user turn; a chat list must end with the user's turn."""
    value = data.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise row_error(f"missing column {key!r}" if key not in data else f"column {key!r} is empty")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise row_error(f"column {key!r}: expected text or a list of messages, got {json_type(value)}")
    messages = []
    for index, turn in enumerate(value):
        if not (isinstance(turn, dict) and isinstance(turn.get("content"), str) and turn.get("role") in ("system", "user", "assistant")):
            raise row_error(f"{key}[{index}]: expected {{'role': system|user|assistant, 'content': text}}")
        messages.append({"role": turn["role"], "content": turn["content"]})
    if messages[-1]["role"] != "user":
        raise row_error(f"{key}[{len(messages) - 1}]: the prompt must end with the user's turn, got {messages[-1]['role']!r}")
    return messages


def _answer(data: dict, key: str, row_error, where: str | None = None) -> str:
    """An answer as text, or as a chat list holding one assistant message (TRL's conversational form)."""
    where = where or key
    value = data.get(key)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) and value[0].get("role") == "assistant":
        value = value[0].get("content")
    if value is None:
        raise row_error(f"missing column {key!r}" if key not in data else f"{where} is empty (null)")
    if not isinstance(value, str):
        raise row_error(f"{where}: expected text or one assistant message, got {json_type(value)}")
    if not value.strip():
        raise row_error(f"{where} is empty")
    return value


def prompt_messages(row: dict) -> list[dict]:
    return row["messages"][:-1]


def preference_pairs(rows: list[dict]) -> list[dict]:
    """Every (prompt, chosen, rejected) pair the rows state, in TRL's conversational form."""
    pairs = []
    rated: dict[tuple, list[dict]] = {}
    for row in rows:
        if "score" in row:
            rated.setdefault(_prompt_key(row), []).append(row)
        elif "worse" in row:
            ranked = [row["messages"][-1]["content"], *row["worse"]]
            pairs += [_pair(prompt_messages(row), ranked[better], ranked[worse])
                      for better, worse in combinations(range(len(ranked)), 2)]
    for group in rated.values():
        for first, second in combinations(group, 2):
            if first["score"] != second["score"]:
                better, worse = (first, second) if first["score"] > second["score"] else (second, first)
                pairs.append(_pair(prompt_messages(better), better["messages"][-1]["content"], worse["messages"][-1]["content"]))
    return pairs


def _pair(prompt: list[dict], chosen: str, rejected: str) -> dict:
    return {"prompt": prompt, "chosen": [_assistant(chosen)], "rejected": [_assistant(rejected)]}


def _prompt_key(row: dict) -> tuple:
    return tuple((message["role"], message["content"]) for message in prompt_messages(row))


def kto_examples(rows: list[dict], threshold: float) -> list[dict]:
    """Unpaired examples for KTO: a rated answer is desirable when its score reaches `threshold`;
    of a pair or ranking, the best answer is desirable and the others are not."""
    examples = []
    for row in rows:
        prompt = prompt_messages(row)
        answer = row["messages"][-1]["content"]
        if "score" in row:
            examples.append(_example(prompt, answer, row["score"] >= threshold))
        elif "worse" in row:
            examples.append(_example(prompt, answer, True))
            examples += [_example(prompt, worse, False) for worse in row["worse"]]
    return examples


def _example(prompt: list[dict], answer: str, desirable: bool) -> dict:
    return {"prompt": prompt, "completion": [_assistant(answer)], "label": desirable}


def best_answers(rows: list[dict]) -> list[dict]:
    """The rows whose answer is a reference worth matching in evaluation: of rated answers only each
    prompt's best-rated one (the first of equals); pairs and rankings already hold their best answer."""
    best: dict[tuple, dict] = {}
    for row in rows:
        if "score" in row and (_prompt_key(row) not in best or row["score"] > best[_prompt_key(row)]["score"]):
            best[_prompt_key(row)] = row
    return [row for row in rows if "score" not in row or best[_prompt_key(row)] is row]


def prompts_of(rows: list[dict]) -> list[list[dict]]:
    """The distinct prompts of the rows, in order (what PPO and GRPO generate answers to)."""
    seen: dict[tuple, list[dict]] = {}
    for row in rows:
        seen.setdefault(_prompt_key(row), prompt_messages(row))
    return list(seen.values())
