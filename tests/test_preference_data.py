"""Preference data: the pairwise, ranking and rating formats, pairs from them, and bad rows rejected."""
import io
import json
from itertools import combinations
from pathlib import Path

from rich.console import Console

from domaintune.config import DataConfig
from domaintune.data.preferences import best_answers, kto_examples, preference_pairs
from domaintune.data.prepare import prepare_dataset


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def prepare(tmp_path: Path, files: list[str], **config) -> tuple[dict, Path]:
    out = tmp_path / "out"
    card = prepare_dataset(DataConfig(train=files, near_dedup={"enabled": False}, **config), out, seed=0,
                           console=Console(file=io.StringIO()))
    return card, out


def all_rows(out: Path) -> list[dict]:
    return [row for split in ("train", "validation", "test") for row in read_jsonl(out / f"{split}.jsonl")]


def test_ranking_expands_into_every_ordered_pair(tmp_path):
    responses = ["best answer", "second answer", "third answer", "worst answer"]
    rows = [{"prompt": f"question {i}", "responses": [f"{r} {i}" for r in responses]} for i in range(3)]
    card, out = prepare(tmp_path, [write_jsonl(tmp_path / "rank.jsonl", rows)], split={"validation": 0.0, "test": 0.0})
    assert card["files"][0]["format"] == "ranking"
    pairs = preference_pairs(all_rows(out))
    expected = {(f"question {i}", f"{responses[a]} {i}", f"{responses[b]} {i}") for i in range(3) for a, b in combinations(range(4), 2)}
    got = {(p["prompt"][-1]["content"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs}
    assert len(pairs) == 3 * 6 and got == expected


def test_pairwise_accepts_chat_lists_and_plain_text(tmp_path):
    rows = [
        {"prompt": "plain prompt", "chosen": "good", "rejected": "bad"},
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "chat prompt"}],
         "chosen": [{"role": "assistant", "content": "good too"}], "rejected": [{"role": "assistant", "content": "bad too"}]},
    ]
    _, out = prepare(tmp_path, [write_jsonl(tmp_path / "pairs.jsonl", rows)], split={"validation": 0.0, "test": 0.0})
    pairs = {pair["chosen"][0]["content"]: pair for pair in preference_pairs(all_rows(out))}
    assert pairs["good"]["prompt"] == [{"role": "user", "content": "plain prompt"}]
    assert pairs["good too"]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert pairs["good too"]["rejected"] == [{"role": "assistant", "content": "bad too"}]


def test_bad_preference_rows_are_rejected_with_reasons(tmp_path):
    pairwise = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "fine", "chosen": "a", "rejected": "b"},
        {"prompt": "same", "chosen": "identical", "rejected": " identical "},
        {"chosen": "a", "rejected": "b"},
    ])
    ranking = write_jsonl(tmp_path / "rank.jsonl", [
        {"prompt": "fine", "responses": ["x", "y"]},
        {"prompt": "lonely", "responses": ["only one"]},
    ])
    rating = write_jsonl(tmp_path / "rate.jsonl", [
        {"prompt": "fine", "response": "r", "score": 2},
        {"prompt": "no number", "response": "r", "score": "high"},
    ])
    card, out = prepare(tmp_path, [pairwise, ranking, rating])
    reasons = {(Path(r["file"]).name, r["line"]): r["reason"] for r in read_jsonl(out / "rejected.jsonl")}
    assert reasons == {
        ("pairs.jsonl", 2): "'chosen' and 'rejected' are the same answer: nothing to prefer",
        ("pairs.jsonl", 3): "missing column 'prompt'",
        ("rank.jsonl", 2): "responses: a ranking needs at least 2 answers, got 1",
        ("rate.jsonl", 2): "column 'score': expected a number, got text",
    }
    assert card["totals"]["rejected"] == 4 and card["totals"]["kept"] == 3


def test_ratings_pair_within_a_prompt_and_label_for_kto(tmp_path):
    rows = [{"prompt": f"q{i}", "response": f"answer {s} for {i} ({tag})", "score": s}
            for i in range(10) for s, tag in ((1, "a"), (3, "b"), (3, "c"), (5, "d"))]
    card, out = prepare(tmp_path, [write_jsonl(tmp_path / "rate.jsonl", rows)], split={"validation": 0.2, "test": 0.2})
    for split in ("train", "validation", "test"):
        split_rows = read_jsonl(out / f"{split}.jsonl")
        prompts = {row["messages"][-2]["content"] for row in split_rows}
        assert len(split_rows) == 4 * len(prompts)  # every answer of a prompt lands in the same split
        pairs = preference_pairs(split_rows)
        assert len(pairs) == 5 * len(prompts)  # scores 1,3,3,5: 6 pairs minus the tie
        for pair in pairs:
            assert int(pair["chosen"][0]["content"].split()[1]) > int(pair["rejected"][0]["content"].split()[1])
        references = best_answers(split_rows)  # what evaluation compares generated answers with
        assert len(references) == len(prompts) and {row["score"] for row in references} == {5.0}
        labels = [example["label"] for example in kto_examples(split_rows, threshold=3)]
        assert labels.count(True) == 3 * len(prompts) and labels.count(False) == len(prompts)


def test_pairs_sharing_a_chosen_answer_are_not_duplicates(tmp_path):
    rows = [{"prompt": "q", "chosen": "right", "rejected": "wrong one"}, {"prompt": "q", "chosen": "right", "rejected": "wrong two"},
            {"prompt": "q", "chosen": "right", "rejected": "wrong one"}]
    card, out = prepare(tmp_path, [write_jsonl(tmp_path / "pairs.jsonl", rows)], split={"validation": 0.0, "test": 0.0})
    assert card["totals"]["duplicates"] == 1
    assert sorted(p["rejected"][0]["content"] for p in preference_pairs(all_rows(out))) == ["wrong one", "wrong two"]


def test_the_reward_win_rate_scores_each_answer_against_its_own_prompt(tmp_path, monkeypatch):
    from domaintune.core.chat import last_user_turn
    from domaintune.evaluation import preference
    from domaintune.evaluation.base_vs_tuned import generation_samples, rows_to_generate
    from domaintune.storage.rundir import RunDir

    # 12 test prompts, 9 answered "Yes": capped to 6, the evaluation keeps the 3 "No" rows, not the first 6.
    test = [{"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "Yes" if i < 9 else "No"}],
             "worse": ["Maybe"]} for i in range(12)]
    reward = tmp_path / "rewards.py"
    reward.write_text("def score(prompts, completions):\n"
                      "    return [float(c == f'answer to {p}') for p, c in zip(prompts, completions)]\n")
    run = RunDir(tmp_path / "run")
    (run.root / "data").mkdir(parents=True)
    write_jsonl(run.data / "test.jsonl", test)
    recipe = {"name": "prefs", "objective": {"name": "dpo", "rewards": [{"function": f"{reward}:score"}]},
              "evaluation": {"max_samples": 6}}
    run.recipe_file.write_text(json.dumps(recipe), encoding="utf-8")

    def evaluate_causal_lm(run, console, harness, select):
        """What the evaluation writes: each generated row's answers, tuned's naming its own question."""
        rows = rows_to_generate(select(run.read_split("test")), run.recipe().evaluation.max_samples)
        outputs = {"base": ["no idea"] * len(rows), "tuned": [f"answer to {last_user_turn(r['messages'])}" for r in rows]}
        run.write_results({"models": {}}, generation_samples(rows, outputs))
        return {"models": {}}

    monkeypatch.setattr(preference, "evaluate_causal_lm", evaluate_causal_lm)
    results = preference.evaluate_policy(run, Console(file=io.StringIO()), None, ("loss",), run.recipe().objective.rewards)
    assert results["preference"]["reward_win_rate"]["wins"] == {"tuned": 6, "base": 0, "tie": 0}
