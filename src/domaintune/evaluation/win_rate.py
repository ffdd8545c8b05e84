"""How often the tuned model's answer beat the base model's: the one definition shared by the LLM
judge, the feedback page and reward-scored evaluation. A tie counts half a win for each side, so a
model that only ever ties scores 0.5, not 0."""
from __future__ import annotations

import math
from statistics import NormalDist


def tuned_win_rate(wins: dict[str, int]) -> float:
    """`wins` counts "tuned", "base" and "tie" outcomes."""
    total = sum(wins.values())
    return (wins.get("tuned", 0) + 0.5 * wins.get("tie", 0)) / total if total else 0.0


def wilson_interval(rate: float, n: int, confidence: float) -> list[float]:
    """The Wilson score interval of a proportion: sensible at small n and at 0 or 1, unlike rate ± z·se."""
    if n == 0:
        return [0.0, 1.0]
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def win_summary(wins: dict[str, int], confidence: float) -> dict:
    """Items, wins, the tuned win rate and its Wilson interval."""
    items = sum(wins.values())
    rate = tuned_win_rate(wins)
    return {"items": items, "wins": wins, "tuned_win_rate": rate, "interval": wilson_interval(rate, items, confidence)}
