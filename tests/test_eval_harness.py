"""The lm-evaluation-harness bridge: local task files written from the run and run offline on a tiny model."""
import pytest
import yaml
from conftest import write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

import domaintune
from domaintune.core.errors import DomaintuneError
from domaintune.evaluation.harness import check_builtin_tasks, run_tasks


def test_harness_tasks_are_written_and_run(tmp_path, tiny_recipe):
    probes = [{"question": f"{i} + 1?", "choices": [str(i + 1), str(i + 7)], "answer": 0} for i in range(4)]
    extra_choice = write_jsonl(tmp_path / "extra-mc.jsonl", probes)
    extra_chat = write_jsonl(tmp_path / "extra_chat.jsonl", [{"prompt": "Office?", "completion": "[Rome - LOCATION]"}] * 3)
    tiny_recipe["evaluation"].update(probes=str(extra_choice), harness_files=[str(extra_choice), str(extra_chat)],
                                     harness_limit=3, compare_base=False)
    tiny_recipe["training"]["max_steps"] = 2
    run = domaintune.train(tiny_recipe)
    results = domaintune.evaluate(run.root, harness=True)

    folder = run.eval / "harness"
    names = ["domaintune_test", "domaintune_probes", "domaintune_extra_mc", "domaintune_extra_chat"]
    for name in names:
        task = yaml.safe_load((folder / f"{name}.yaml").read_text())
        assert task["dataset_path"] == "json" and task["dataset_kwargs"]["data_files"]["test"] == str(folder / f"{name}.jsonl")
    scores = results["models"]["tuned"]["harness"]
    assert set(names) <= set(scores)
    assert 0 <= scores["domaintune_test"]["exact_match,first_line"] <= 1
    assert {"acc,none", "acc_norm,none"} <= set(scores["domaintune_probes"])
    assert "lm-evaluation-harness" in run.report.read_text()


@pytest.mark.slow  # lm-eval indexes its ~15k built-in task files first (~20 s)
def test_builtin_tasks_unknown_or_unreachable_are_user_errors(tmp_path, tiny_model_dir):
    with pytest.raises(DomaintuneError, match="no task 'no_such_task'"):
        check_builtin_tasks(tmp_path, ["no_such_task"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # The tests run with the hub offline, as every machine here is: a hub task can't load its data.
    with pytest.raises(DomaintuneError, match="'arc_easy' could not load its data.*harness_files"):
        run_tasks(model, tokenizer, tmp_path, [], ["arc_easy"], batch_size=2, limit=2)


def test_labelled_rows_become_a_multiple_choice_task_and_bad_extra_files_are_named(tmp_path, tiny_model_dir):
    import json

    from domaintune.config import Recipe
    from domaintune.evaluation.harness import write_tasks

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"messages": [{"role": "user", "content": f"Review {i}"}, {"role": "assistant", "content": label}],
             "label": label} for i, label in enumerate(["positive", "negative", "positive"])]
    names = write_tasks(tmp_path / "h", Recipe(), tokenizer, rows, probes=[])
    assert names == ["domaintune_test", "domaintune_labels"]
    docs = [json.loads(line) for line in (tmp_path / "h" / "domaintune_labels.jsonl").read_text().splitlines()]
    assert [doc["gold"] for doc in docs] == [1, 0, 1] and docs[0]["choices"] == ["negative", "positive"]
    assert docs[0]["query"].endswith("<|im_start|>assistant\n")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "q", "completion": "a"}, {"prompt": "q"}])
    with pytest.raises(DomaintuneError, match=r"bad.jsonl line 2: .*completion"):
        write_tasks(tmp_path / "h", Recipe(evaluation={"harness_files": [str(bad)]}), tokenizer, rows, probes=[])


def test_the_generate_until_filter_scores_the_first_line(tiny_model_dir):
    from lm_eval.filters.extraction import RegexFilter

    from domaintune.evaluation.harness import _generate_until

    spec = _generate_until(AutoTokenizer.from_pretrained(tiny_model_dir), 8)["filter_list"][0]["filter"][0]
    regex = RegexFilter(regex_pattern=spec["regex_pattern"], fallback=spec["fallback"])
    assert list(regex.apply([["  [Rome - LOCATION] \nBecause it is.", "", "No entities found"]], [{}])) == [
        ["[Rome - LOCATION]", "", "No entities found"]
    ]
