"""Multi-turn chat: SQL for the next question of a conversation over a database schema (CoSQL).

evals `sql/co_sql.jsonl` (100 conversations). The registry keeps earlier questions and answers as
system messages; they are written back as the user and assistant turns they were, so every row is
an OpenAI chat conversation of several turns whose last assistant turn is trained and evaluated.
"""
from .common import write_jsonl


def turn(item: dict) -> dict:
    if item["role"] == "system" and item["content"].startswith("Q:"):
        return {"role": "user", "content": item["content"]}
    if item["role"] == "system" and item["content"].startswith("A:"):
        return {"role": "assistant", "content": item["content"]}
    return {"role": item["role"], "content": item["content"]}


def convert(source: list[dict], limit: int) -> list[dict]:
    return [{"messages": [*map(turn, row["input"]), {"role": "assistant", "content": row["ideal"][0]}]}
            for row in source[:limit]]


TASK = dict(
    name="conversational-sql", shape="multi-turn chat, SQL answers", member="evals/registry/data/sql/co_sql.jsonl",
    filename="cosql.jsonl", max_rows=100, task=None, convert=convert, write=write_jsonl,
)
