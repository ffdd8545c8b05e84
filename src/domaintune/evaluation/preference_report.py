"""The preference report (preferences.html in the run directory): reward-model pairwise accuracy,
the training curves of the objective (reward and KL for PPO/GRPO, reward margins for DPO-style
objectives), and the base-vs-tuned win rate by the reward and by people (the feedback page).

For policy objectives the causal-LM report.html is written too; this page adds what it lacks.
"""
from __future__ import annotations

from importlib import resources

import jinja2

from domaintune.core.charts import new_axes, png_data_uri
from domaintune.storage.jsonl import read_json

# Curves drawn together on one chart, in this order; anything else logged gets its own.
GROUPS = {
    "reward": ("reward", "rewards/chosen", "rewards/rejected", "rewards/margins", "margin",
               "eval_rewards/chosen", "eval_rewards/rejected", "eval_rewards/margins", "eval_margin"),
    "KL to the reference": ("kl", "eval_kl"),
    "accuracy": ("accuracy", "eval_accuracy", "rewards/accuracies", "eval_rewards/accuracies"),
    "loss": ("loss", "eval_loss", "policy_loss", "value_loss", "nll_loss", "log_odds_ratio"),
}


def _chart(title: str, curves: dict[str, list[list[float]]]) -> str:
    figure, axes = new_axes(6.0, 2.8)
    for name, points in curves.items():
        steps, values = zip(*points)
        axes.plot(steps, values, label=name, linewidth=1.5, marker="o" if len(points) < 12 else None, markersize=3)
    axes.set_xlabel("step")
    axes.set_ylabel(title)
    axes.legend(frameon=False, fontsize=8)
    return png_data_uri(figure)


def _charts(curves: dict[str, list[list[float]]]) -> list[dict]:
    charts, placed = [], set()
    for title, names in GROUPS.items():
        group = {name: curves[name] for name in names if curves.get(name)}
        if group:
            charts.append({"title": title, "image": _chart(title, group)})
            placed |= set(group)
    for name, points in curves.items():
        if name not in placed and points:
            charts.append({"title": name, "image": _chart(name, {name: points})})
    return charts


def _win_chart(wins: dict[str, int]) -> str:
    figure, axes = new_axes(5.0, 1.9, grid=False)
    left = 0
    for name, color in (("tuned", "#1e8e3e"), ("tie", "#9aa5b1"), ("base", "#c5221f")):
        axes.barh([0], [wins.get(name, 0)], left=left, color=color, label=f"{name} {wins.get(name, 0)}")
        left += wins.get(name, 0)
    axes.set_yticks([])
    axes.set_xlabel("held-out prompts")
    axes.legend(frameon=False, ncols=3, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    return png_data_uri(figure)


def write_preference_report(run) -> None:
    results = run.results()
    preference = results.get("preference", {})
    recipe = run.recipe()
    human = None
    feedback = run.eval / "feedback-summary.json"
    if feedback.exists():
        human = read_json(feedback)
    by_reward = preference.get("reward_win_rate")
    source = resources.files("domaintune.evaluation").joinpath("preference_report.html.j2").read_text(encoding="utf-8")
    template = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True,
                                  undefined=jinja2.StrictUndefined).from_string(source)
    html = template.render(
        title=run.root.name,
        objective=recipe.objective.name,
        method=recipe.method.name,
        model=recipe.model.name,
        reward_model=results.get("reward_model"),
        charts=_charts(preference.get("curves", {})),
        by_reward=by_reward,
        by_reward_chart=_win_chart(by_reward["wins"]) if by_reward else None,
        human=human,
        human_chart=_win_chart(human["wins"]) if human else None,
        has_main_report=run.report.exists(),
    )
    (run.root / "preferences.html").write_text(html, encoding="utf-8")
