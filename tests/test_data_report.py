"""The whole pipeline with every stage on: stage-by-stage summary, card counts and data_report.html."""
import io
import json

from rich.console import Console

from domaintune.config import DataConfig
from domaintune.data.prepare import prepare_dataset


def test_all_stages_print_a_summary_and_write_the_report(tmp_path):
    rows = [
        {"text": f"Loan {i} from Bank {i % 3} to Client {i}, due in {2020 + i % 5}.", "label": "approved" if i % 4 else "rejected"}
        for i in range(40)
    ]
    rows += [
        {"text": "Contact ann@bank.com about loan 1.", "label": "approved"},  # PII, redacted
        {"text": "LOAN 1 FROM BANK 1 TO CLIENT 1 DUE IN 2021", "label": "approved"},  # near-duplicate of row 2
        {"text": "spam " * 30, "label": "approved"},  # repetitive
    ]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(row) + "\n" for row in rows[:10]))  # most of them land in train
    config = DataConfig(
        train=[str(train)],
        label_prompt="Decide: {text}",
        contamination={"benchmarks": [str(bench)]},
        augment={"methods": ["template"], "max_share": 0.1},
    )
    out = io.StringIO()
    card = prepare_dataset(config, tmp_path / "out", seed=0, console=Console(file=out, width=200))
    text = out.getvalue()
    for stage in ("read", "rejected", "pii", "length", "quality", "duplicate", "near-duplicate", "prompt also in train", "augmented"):
        assert f"  {stage} " in text
    assert "PII found (redact): email 1" in text and "report: " in text
    totals = card["totals"]
    assert totals["removed_by_reason"] == {"repetitive": 1, "near-duplicate": 1}
    assert totals["near_duplicates"] == 1 and card["pii"]["found"] == {"email": 1}
    assert totals["augmented"] == card["augmentation"]["template"] > 0
    assert totals["read"] + totals["augmented"] == totals["rejected"] + totals["removed"] + totals["kept"]
    in_train = {json.loads(line)["messages"][0]["content"] for line in (tmp_path / "out" / "train.jsonl").open()}
    assert card["contamination"][str(bench)]["contaminated"] == sum(f"Decide: {row['text']}" in in_train for row in rows[:10]) > 0
    redacted = [json.loads(line) for part in ("train", "validation", "test") for line in (tmp_path / "out" / f"{part}.jsonl").open()]
    assert any("[EMAIL]" in row["messages"][0]["content"] for row in redacted)
    html = (tmp_path / "out" / "data_report.html").read_text()
    assert html.count("<img src=\"data:image/png;base64,") == 5  # funnel, reasons, PII, lengths, labels
    assert "Near-duplicate pairs" in html and "Contamination" in html
