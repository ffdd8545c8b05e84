"""Pairwise LLM-as-judge: which answer, base or tuned, is better on each test item.

Each pair is judged twice with the answers swapped. Judges favour a position, so a win counts only
when both orders name the same answer; disagreeing orders count as a tie and lower the reported
consistency. The judge is any model domaintune can load or any OpenAI-compatible endpoint.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from domaintune.config import ModelConfig
from domaintune.config.inference import InferenceConfig
from domaintune.core.chat import render
from domaintune.core.errors import DomaintuneError
from domaintune.core.net import is_loopback
from domaintune.evaluation.win_rate import tuned_win_rate
from domaintune.models.generation import open_generator

Ask = Callable[[list[str]], list[str]]  # judge prompts -> replies
TEMPLATE = """{rubric}

Question:
{question}

Reference answer:
{reference}

Answer A:
{a}

Answer B:
{b}

Which answer is better? Reply with exactly one of: A, B, tie."""
_CHOICE = re.compile(r"\b(A|B|tie)\b", re.IGNORECASE)


def parse_choice(reply: str) -> str:
    """'A', 'B' or 'tie' from the first of them in the reply; anything else is a tie."""
    match = _CHOICE.search(reply)
    return "tie" if match is None else ("tie" if match.group(1).lower() == "tie" else match.group(1).upper())


def judge_pairs(ask: Ask, samples: list[dict], rubric: str) -> list[dict]:
    """Per sample: the choice with base as A, the choice with tuned as A, and the combined winner."""
    prompts = []
    for sample in samples:
        fields = {"rubric": rubric, "question": sample["prompt"], "reference": sample["reference"]}
        prompts.append(TEMPLATE.format(**fields, a=sample["base"], b=sample["tuned"]))
        prompts.append(TEMPLATE.format(**fields, a=sample["tuned"], b=sample["base"]))
    replies = ask(prompts)
    verdicts = []
    for index in range(len(samples)):
        first = {"A": "base", "B": "tuned"}.get(parse_choice(replies[2 * index]), "tie")
        swapped = {"A": "tuned", "B": "base"}.get(parse_choice(replies[2 * index + 1]), "tie")
        verdicts.append({"base_first": first, "tuned_first": swapped,
                         "winner": first if first == swapped else "tie", "consistent": first == swapped})
    return verdicts


def summarise(verdicts: list[dict], human: dict[int, str] | None = None) -> dict:
    wins = Counter(verdict["winner"] for verdict in verdicts)
    summary = {
        "items": len(verdicts),
        "wins": {name: wins.get(name, 0) for name in ("tuned", "base", "tie")},
        "tuned_win_rate": tuned_win_rate(wins),
        "consistency": sum(verdict["consistent"] for verdict in verdicts) / len(verdicts),
    }
    if human:
        shared = [index for index in human if index < len(verdicts)]
        if shared:
            agree = sum(verdicts[index]["winner"] == human[index] for index in shared)
            summary["human_agreement"] = {"items": len(shared), "agreement": agree / len(shared)}
    return summary


def read_feedback(path: Path) -> dict[int, str]:
    """Human choices, one JSON line each: {"index": sample index, "choice": "base" | "tuned" | "tie"}."""
    if not path.is_file():
        return {}
    choices = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
            choices[int(record["index"])] = str(record["choice"])
        except (ValueError, KeyError, TypeError):
            raise DomaintuneError(f"{path} line {number}: expected {{\"index\": N, \"choice\": \"base|tuned|tie\"}}") from None
    return choices


def local_judge(name: str, max_new_tokens: int, batch_size: int, bf16: bool, inference: InferenceConfig) -> Ask:
    """A judge from any model domaintune can load, answering greedily through its chat template on the
    recipe's generation engine."""
    generator = open_generator(ModelConfig(name=name), inference, bf16=bf16, exact=True)
    tokenizer = generator.tokenizer

    def ask(prompts: list[str]) -> list[str]:
        rendered = [render(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True) for p in prompts]
        return generator.generate(rendered, max_new_tokens, batch_size)

    return ask


def endpoint_api_key(base_url: str, api_key_env: str, allowed_hosts: list[str]) -> tuple[str | None, str]:
    """The key to send the judge endpoint, and a sentence saying whether it is sent. A recipe names the
    variable, so a shared recipe could otherwise carry any secret of the environment (GITHUB_TOKEN, ...) to
    any server: the key goes only to this machine or to a host the recipe lists in `allowed_hosts`."""
    host = urlsplit(base_url).hostname or ""
    if not os.environ.get(api_key_env):
        return None, f"no API key sent ({api_key_env} is not set)"
    if is_loopback(host) or host in {name.lower() for name in allowed_hosts}:
        return os.environ[api_key_env], f"API key from {api_key_env} sent to {host}"
    return None, (f"API key from {api_key_env} not sent: {host} is neither this machine nor listed in "
                  "evaluation.judge.allowed_hosts")


def endpoint_judge(base_url: str, model: str, api_key: str | None, max_new_tokens: int) -> Ask:
    """A judge behind an OpenAI-compatible chat endpoint (OpenAI, vLLM, `domaintune serve`, ...);
    `api_key` from endpoint_api_key."""
    from openai import OpenAI, OpenAIError

    client = OpenAI(base_url=base_url, api_key=api_key or "not-needed")

    def ask(prompts: list[str]) -> list[str]:
        replies = []
        for prompt in prompts:
            try:
                response = client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_new_tokens, temperature=0
                )
            except OpenAIError as error:
                raise DomaintuneError(f"evaluation.judge.endpoint {base_url}: {error}") from None
            replies.append(response.choices[0].message.content or "")
        return replies

    return ask
