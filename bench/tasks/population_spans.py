"""Free text grounded in a passage: quote the spans of a clinical abstract that define its population.

evals `population_span_extraction` (497 rows). The shortest abstracts are kept (the suite's time
budget; the longest run to 700 tokens), written as a Parquet table of prompt and completion.
"""
from .common import message, write_parquet


def convert(source: list[dict], limit: int) -> list[dict]:
    shortest = sorted(source, key=lambda row: len(message(row, "user")))[:limit]
    return [{"prompt": f"{message(row, 'system')}\n\n{message(row, 'user')}", "completion": row["ideal"]}
            for row in shortest]


TASK = dict(
    name="population-spans", shape="answer quoted from a passage", member="evals/registry/data/population_span_extraction/samples.jsonl",
    filename="abstracts.parquet", max_rows=150, task=None, convert=convert, write=write_parquet,
)
