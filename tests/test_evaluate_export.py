import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

import domaintune


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir):
    # Module-scoped: train once, then evaluate and export the same run in several tests.
    from conftest import write_jsonl

    tmp = tmp_path_factory.mktemp("evalrun")
    cities = ["Paris", "Berlin", "Madrid", "Rome", "Vienna"]
    rows = [
        {"messages": [{"role": "user", "content": f"Ticket {i}: office?"}, {"role": "assistant", "content": f"[{cities[i % 5]} - LOCATION]"}]}
        for i in range(40)
    ]
    recipe = {
        "name": "evalrun",
        "output_dir": str(tmp / "runs"),
        "model": {"name": str(tiny_model_dir)},
        "data": {"train": [str(write_jsonl(tmp / "d.jsonl", rows))], "max_tokens": 64, "split": {"validation": 0.1, "test": 0.2}},
        "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "training": {"max_steps": 6, "batch_size": 4, "lr": 2e-2, "eval_every": 3, "save_every": 3,
                     "threads": 1, "precision": "fp32", "early_stopping": None},
        "evaluation": {"metrics": ["entity_f1", "exact_match", "rouge_l"], "max_samples": 4, "max_new_tokens": 8, "batch_size": 2},
        "export": {"dtype": "float32"},
    }
    return domaintune.train(recipe)


def greedy(model, tokenizer, text, tokens=10):
    batch = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, batch["input_ids"].shape[1]:].tolist()


def test_evaluate_compares_base_and_tuned_and_writes_report(trained_run):
    results = domaintune.evaluate(trained_run.root)
    assert set(results["models"]) == {"base", "tuned"}
    for model in results["models"].values():
        assert {"entity_f1", "entity_precision", "entity_recall", "exact_match", "rouge_l"} <= set(model["metrics"])
        assert model["loss"]["test"] > 0 and model["perplexity"]["test"] > 1
    # Training lowered the test loss of the tuned model below the base model's.
    assert results["models"]["tuned"]["loss"]["test"] < results["models"]["base"]["loss"]["test"]
    samples = [json.loads(line) for line in (trained_run.eval / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == results["n_generated"] == 4
    assert all({"prompt", "reference", "base", "tuned"} <= set(s) for s in samples)
    html = trained_run.report.read_text()
    assert "entity_f1" in html and "data:image/png;base64" in html
    # The default engine wrote both models' answers (the adapter merged and converted), and the report says so.
    for model in results["models"].values():
        assert model["generation"]["engine"] == "ctranslate2" and model["generation"]["compute_type"] == "float32"
        assert 0 <= model["generation"]["seconds"] <= model["seconds"]  # tiny answers can round to 0.0 s
    assert "tuned answers by" in html and "ctranslate2 (float32)" in html


def test_adapter_loads_with_stock_peft(trained_run, tiny_model_dir):
    written = domaintune.export_model(trained_run.root)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, written["adapter"])
    assert any("lora_B" in name and param.abs().sum() > 0 for name, param in model.named_parameters())


def test_merged_model_generates_what_the_adapter_did(trained_run, tiny_model_dir):
    written = domaintune.export_model(trained_run.root)
    tokenizer = AutoTokenizer.from_pretrained(written["merged"])
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Ticket 3: office?"}], tokenize=False, add_generation_prompt=True)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), written["adapter"]).eval()
    merged = AutoModelForCausalLM.from_pretrained(written["merged"]).eval()
    assert not any(name.endswith(".bin") for name in __import__("os").listdir(written["merged"]))
    assert greedy(merged, tokenizer, prompt) == greedy(adapted, tokenizer, prompt)


def test_export_writes_a_ctranslate2_model_that_answers_as_the_merged_one(trained_run):
    pytest.importorskip("ctranslate2")
    from rich.console import Console

    from domaintune.export.exporter import export_causal_lm
    from domaintune.models.generation import CTranslate2Generator, TorchGenerator

    recipe = trained_run.recipe()
    recipe.export.ctranslate2 = ["float32"]
    written = export_causal_lm(trained_run, recipe, Console(quiet=True))
    folder = written["ctranslate2-float32"]
    assert (trained_run.export / "ctranslate2-float32" / "model.bin").exists()
    tokenizer = AutoTokenizer.from_pretrained(written["merged"])
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"Ticket {i}: office?"}], tokenize=False,
                                             add_generation_prompt=True) for i in range(3)]
    merged = AutoModelForCausalLM.from_pretrained(written["merged"]).eval()
    expected = TorchGenerator(merged, tokenizer, False).generate(prompts, 8, 3)
    assert CTranslate2Generator(Path(folder), tokenizer, "float32", 1).generate(prompts, 8, 3) == expected
