"""Objectives: pretrain packs raw text into blocks and reports domain perplexity before/after;
instruct turns labelled rows into instructions with the allowed answers."""
import json

import pytest
from conftest import write_jsonl
from transformers import AutoTokenizer

import domaintune
from domaintune.config import EvaluationConfig
from domaintune.core.errors import DomaintuneError
from domaintune.objectives.pretrain import encode_blocks


def quick_evaluation(recipe: dict) -> None:
    """These tests run whole recipes; the general-ability probes (where present) are not what they check."""
    if "forgetting" in EvaluationConfig.model_fields:
        recipe["evaluation"]["forgetting"] = False


def test_blocks_concatenate_documents_with_eos_and_keep_the_tail(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"text": "The borrower shall repay the loan."}, {"text": "Interest accrues daily at the agreed rate."}]
    stream = []
    for row in rows:
        stream += tokenizer(row["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    blocks = encode_blocks(tokenizer, rows, block_size=5)
    assert [len(b["input_ids"]) for b in blocks[:-1]] == [5] * (len(blocks) - 1)
    assert sum((b["input_ids"] for b in blocks), []) == stream
    assert all(b["labels"] == b["input_ids"] for b in blocks)


def test_pretrain_lowers_domain_perplexity(tiny_recipe, tmp_path):
    clauses = ["The borrower shall repay the principal", "Interest accrues daily on the outstanding amount",
               "The lender may terminate the facility", "Collateral secures every obligation of the borrower",
               "Fees are payable on the closing date", "The agent acts for all lenders",
               "Each guarantor guarantees punctual payment", "This agreement is governed by New York law"]
    # 56 documents, each a distinct ordered pair of clauses (no two near-duplicates).
    pairs = [(a, b) for a in range(8) for b in range(8) if a != b][:56]
    rows = [{"text": f"Section {i}. {clauses[a]}. {clauses[b]}."} for i, (a, b) in enumerate(pairs)]
    tiny_recipe["data"] = {"train": [str(write_jsonl(tmp_path / "docs.jsonl", rows))], "format": "text", "max_tokens": 128}
    tiny_recipe["objective"] = {"name": "pretrain", "block_size": 48}
    tiny_recipe["training"].update(eval_every=12, save_every=12)
    run = domaintune.train(tiny_recipe)
    summary = json.loads((run.model / "training.json").read_text())
    ppl = summary["domain_perplexity"]
    assert ppl["after"] < ppl["before"] * 0.5
    # Every block but the last of each split is block_size long: 60 docs of ~20 tokens make few blocks.
    assert summary["train_rows"] < 48


def test_instruct_builds_instructions_from_labelled_rows(tiny_recipe, tmp_path):
    rows = [{"text": f"Payment {i} is {'late' if i % 3 else 'on time'}.", "label": "late" if i % 3 else "on_time"}
            for i in range(60)]
    tiny_recipe["data"] = {"train": [str(write_jsonl(tmp_path / "labelled.jsonl", rows))], "format": "labelled", "max_tokens": 128}
    tiny_recipe["objective"] = {"name": "instruct", "task": "Classify the payment status."}
    tiny_recipe["training"].update(eval_every=12, save_every=12)
    run = domaintune.train(tiny_recipe)
    prepared = [json.loads(line) for line in (run.data / "train.jsonl").read_text().splitlines()]
    user = prepared[0]["messages"][-2]["content"]
    assert user.startswith("Classify the payment status. Answer with one of: late, on_time.\n\nPayment ")
    assert prepared[0]["messages"][-1]["content"] in {"late", "on_time"}
    test_rows = [json.loads(line) for line in (run.data / "test.jsonl").read_text().splitlines()]
    assert all("Answer with one of: late, on_time." in r["messages"][-2]["content"] for r in test_rows)
    losses = [json.loads(l)["loss"] for l in run.metrics.read_text().splitlines() if '"loss"' in l]
    assert losses[-1] < losses[0] * 0.8


def test_instruct_needs_a_task():
    with pytest.raises(DomaintuneError, match="objective.task: field required"):
        domaintune.load({"objective": {"name": "instruct"}})


def test_stages_train_each_stage_from_the_previous_weights(tiny_recipe, tmp_path):
    docs = [{"text": f"Clause {i}: the office of the lender is in city number {i * 7}."} for i in range(30)]
    text_file = write_jsonl(tmp_path / "docs.jsonl", docs)
    tiny_recipe["training"].update(max_steps=2, eval_every=2, save_every=2)
    quick_evaluation(tiny_recipe)
    tiny_recipe["stages"] = [
        {"label": "domain", "data": {"train": [str(text_file)], "format": "text"},
         "objective": {"name": "pretrain", "block_size": 32}, "method": {"name": "full"}, "training": {"lr": 1e-3}},
        {"label": "task", "objective": {"name": "sft"}},
    ]
    final = domaintune.run(tiny_recipe)
    summary = json.loads((tmp_path / "runs" / "tiny-stages.json").read_text())
    assert [s["objective"] for s in summary] == ["pretrain", "sft"]
    assert summary[0]["domain_perplexity"]["after"] < summary[0]["domain_perplexity"]["before"]
    first_export = str(__import__("pathlib").Path(summary[0]["run_dir"]) / "export" / "merged")
    assert summary[1]["base_model"] == first_export == final.recipe().model.name
    assert final.recipe().method.name == "lora"  # the recipe's own method for the stage that names none


def test_a_stage_that_cannot_merge_must_come_last(tiny_recipe):
    tiny_recipe["stages"] = [{"method": {"name": "prompt"}}, {}]
    with pytest.raises(DomaintuneError, match="can't be merged"):
        domaintune.load(tiny_recipe)


def test_compare_tabulates_every_variant(tiny_recipe):
    tiny_recipe["training"].update(max_steps=2, eval_every=2, save_every=2)
    quick_evaluation(tiny_recipe)
    tiny_recipe["compare"] = {"variants": [{"method": {"name": "lora", "r": 4}}, {"method": {"name": "ia3"}, "lr": 5e-2}]}
    result = domaintune.compare(tiny_recipe)
    rows = {row["variant"]: row for row in result["rows"]}
    assert set(rows) == {"lora", "ia3"}
    assert rows["ia3"]["trainable"] < rows["lora"]["trainable"]
    assert all(row["artifact_mb"] > 0 and row["test_loss"] > 0 and row["merged"] for row in rows.values())
    table = (__import__("pathlib").Path(result["folder"]) / "comparison.md").read_text()
    assert "| base |" in table and "| ia3 | ia3 |" in table
