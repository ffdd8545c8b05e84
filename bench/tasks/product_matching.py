"""Yes/no: do two product titles name the same product? (88% "No").

evals `product-matching` (zero-shot variant, 433 rows), written as Alpaca JSON (instruction,
input, output), the format most instruction-tuning tutorials use.
"""
from .common import capped, message, write_json


def convert(source: list[dict], limit: int) -> list[dict]:
    rows = []
    for row in capped(source, limit):
        question, _, products = message(row, "user").partition("\nProduct 1:")
        rows.append({"instruction": question, "input": "Product 1:" + products, "output": row["ideal"]})
    return rows


TASK = dict(
    name="product-matching", shape="yes/no, 88% No", member="evals/registry/data/product-matching/zeroshot/samples.jsonl",
    filename="matching.json", max_rows=300, task=None, convert=convert, write=write_json,
)
