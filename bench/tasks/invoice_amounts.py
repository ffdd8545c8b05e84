"""Extraction into a fixed format: the dollar amount an email says was paid, or "unknown".

evals `invoices` (100 rows): bank and billing emails. Written as OpenAI chat JSONL exactly as the
evaluation set holds it: the email in one system message and the question in a second system
message with a `name` field, which OpenAI's fine-tuning format allows.
"""
from .common import write_jsonl


def convert(source: list[dict], limit: int) -> list[dict]:
    return [{"messages": [*row["input"], {"role": "assistant", "content": row["ideal"]}]} for row in source[:limit]]


TASK = dict(
    name="invoice-amounts", shape="extraction, fixed format ($ amount or unknown)", member="evals/registry/data/invoices/match.jsonl",
    filename="invoices.jsonl", max_rows=100, task=None, convert=convert, write=write_jsonl,
)
