"""Multiple choice: the FCC Amateur Extra licence exam (A-D, balanced), knowledge a 135M model lacks.

evals `fcc_amateur_extra` (591 rows), written as ShareGPT conversations (system, human, gpt).
"""
from .common import capped, message, write_jsonl


def convert(source: list[dict], limit: int) -> list[dict]:
    return [{"conversations": [{"from": "system", "value": message(row, "system")},
                               {"from": "human", "value": message(row, "user").strip()},
                               {"from": "gpt", "value": row["ideal"]}]}
            for row in capped(source, limit)]


TASK = dict(
    name="radio-exam", shape="multiple choice, 4 options", member="evals/registry/data/fcc_amateur_extra/samples.jsonl",
    filename="fcc_extra.jsonl", max_rows=300, task=None, convert=convert, write=write_jsonl,
)
