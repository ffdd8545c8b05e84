"""The forgetting check: probe loading, likelihood scoring, and a whole evaluation with probes on a tiny model."""
import json

import pytest
import torch
from conftest import write_jsonl
from test_inference import prompt_learning_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import domaintune
from domaintune.core.errors import DomaintuneError
from domaintune.evaluation.forgetting import answer_probes, load_probes, option_logprobs


def test_the_builtin_probe_set_covers_four_abilities():
    source, probes = load_probes()
    assert source == "built-in general probes" and len(probes) >= 200
    assert {p.category for p in probes} == {"knowledge", "instructions", "formatting", "arithmetic"}
    assert len({p.question for p in probes}) == len(probes)


def test_a_bad_probe_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "probes.jsonl"
    path.write_text('{"question": "2+2?", "choices": ["4", "5"], "answer": 0}\n'
                    '{"question": "3+3?", "choices": ["6", "7"], "answer": 2}\n')
    with pytest.raises(DomaintuneError, match=r"probes.jsonl line 2: .*answer 2 is not an index"):
        load_probes(str(path))
    with pytest.raises(DomaintuneError, match="can't read"):
        load_probes(str(tmp_path / "missing.jsonl"))


@pytest.mark.parametrize("method", [None, "prompt", "prefix"])
def test_option_scores_equal_full_sequences(tiny_model_dir, tmp_path, method):
    """A plain model's scores share the prompt's cache; a prompt-learning model's are full sequences (peft ignores
    the cache's positions). Either way each equals the option's log-probability after its prompt."""
    model = (prompt_learning_model(tiny_model_dir, tmp_path, method) if method
             else AutoModelForCausalLM.from_pretrained(tiny_model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = ["The capital of France is", "Two plus two equals a number, namely", "Hi"]
    options = [[" Paris", " Lyon or Nice"], [" four or so", " 4", " five"], [" there, how are you today", "!"]]
    scores = option_logprobs(model, tokenizer, prompts, options, batch_size=2, bf16=False)
    for prompt, item, item_scores in zip(prompts, options, scores):
        for option, score in zip(item, item_scores):
            prefix = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            full = prefix + tokenizer(option, add_special_tokens=False)["input_ids"]
            with torch.no_grad():  # a soft prompt's virtual tokens come first: the last len(full) positions
                logprobs = torch.log_softmax(model(torch.tensor([full])).logits[0, -len(full):].float(), -1)
            expected = sum(logprobs[i - 1, full[i]].item() for i in range(len(prefix), len(full)))
            assert score == pytest.approx(expected, abs=1e-4)


def test_answer_probes_picks_the_most_likely_option(tiny_model_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    _, probes = load_probes()
    correct = answer_probes(model, tokenizer, probes[:6], batch_size=8, bf16=False)
    assert correct.shape == (6,) and set(correct) <= {0.0, 1.0}


def test_evaluation_reports_intervals_forgetting_errors_and_judge(tmp_path, tiny_recipe, tiny_model_dir):
    probes = [{"question": f"What is {i} + 1?", "choices": [str(i + 1), str(i + 2)], "answer": 0,
               "category": "arithmetic" if i % 2 else "counting"} for i in range(8)]
    tiny_recipe["evaluation"].update(probes=str(write_jsonl(tmp_path / "probes.jsonl", probes)),
                                     bootstrap_resamples=200, batch_size=4,
                                     judge={"model": str(tiny_model_dir), "max_items": 2, "max_new_tokens": 2})
    tiny_recipe["training"]["max_steps"] = 4
    run = domaintune.train(tiny_recipe)
    results = domaintune.evaluate(run.root)

    assert results["confidence"]["resamples"] == 200
    interval = results["comparison"]["entity_f1"]
    assert interval["low"] <= interval["delta"] <= interval["high"]
    assert interval["verdict"] in {"better", "worse", "no clear difference"}
    assert {"loss (test)", "perplexity (validation)", "exact_match"} <= set(results["comparison"])
    forgetting = results["forgetting"]
    assert forgetting["items"] == {"overall": 8, "counting": 4, "arithmetic": 4}
    assert set(forgetting["comparison"]) == {"overall", "counting", "arithmetic"}
    assert 0 <= results["models"]["tuned"]["probes"]["accuracy"]["overall"] <= 1
    errors = results["errors"]
    assert errors["regressions"]["metric"] == "entity_f1"
    assert sum(errors["regressions"][k] for k in ("worse", "better", "same")) == results["n_generated"]
    assert set(errors["entities"]) == {"base", "tuned"}
    assert results["judge"]["items"] == 2 and sum(results["judge"]["wins"].values()) == 2
    html = run.report.read_text()
    assert "General ability (forgetting check)" in html and "Error analysis" in html and "verdict</th>" in html
    assert "Judge: base vs tuned" in html
    assert json.loads((run.eval / "results.json").read_text())["forgetting"]["source"].endswith("probes.jsonl")
