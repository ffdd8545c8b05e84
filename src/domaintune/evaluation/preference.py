"""The evaluation of a preference-tuned policy: the causal-LM evaluation with the best answer as the
reference, plus the objective's training curves and, given a reward, the base-vs-tuned win rate by it."""
from __future__ import annotations

from rich.console import Console

from domaintune.data.preferences import best_answers
from domaintune.evaluation.base_vs_tuned import evaluate_causal_lm
from domaintune.evaluation.preference_report import write_preference_report
from domaintune.evaluation.reward_sources import reward_win_rate
from domaintune.storage.jsonl import read_jsonl
from domaintune.storage.rundir import RunDir


def log_curves(run: RunDir, keys: tuple[str, ...]) -> dict[str, list[list[float]]]:
    """The logged values named in `keys`, and their validation twins (eval_<key>), as [step, value]
    lists from metrics.jsonl."""
    curves: dict[str, list[list[float]]] = {}
    for record in read_jsonl(run.metrics):
        for key in (*keys, *(f"eval_{key}" for key in keys)):
            if isinstance(record.get(key), (int, float)):
                curves.setdefault(key, []).append([record["step"], record[key]])
    return curves


def evaluate_policy(run: RunDir, console: Console, harness: bool | None, curve_keys: tuple[str, ...],
                    reward_specs: list | None) -> dict:
    """The causal-LM evaluation (the best answer is the reference), plus the training curves of the
    objective and, with a reward model or function, the base-vs-tuned win rate by that reward."""
    results = evaluate_causal_lm(run, console=console, harness=harness, select=best_answers)
    preference: dict = {"curves": log_curves(run, curve_keys)}
    samples = run.samples()
    if reward_specs and samples and samples[0].get("base") is not None:
        preference["reward_win_rate"] = reward_win_rate(reward_specs, samples, run.recipe().evaluation.confidence)
    results["preference"] = preference
    run.write_results(results)
    write_preference_report(run)
    return results


