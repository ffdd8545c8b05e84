"""Pairwise LLM-as-judge: which answer, base or tuned, is better on each test item.

Each pair is judged twice with the answers swapped. Judges favour a position, so a win counts only
when both orders name the same answer; disagreeing orders count as a tie and lower the reported
consistency, and so does a reply that names no clear verdict (counted as unparsed). The judge is any
model domaintune can load or any OpenAI-compatible endpoint.
"""
from __future__ import annotations

import itertools
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
# Verdict tokens: capital A or B (a lowercase "a" is the article; "A's" a possessive) or the word "tie".
_LETTER = r"(?<![\w-])[AB](?![\w-]|['’]s\b)"
_TIE = r"(?<![\w-])(?i:tie)(?![\w-])"
_VERDICT = re.compile(rf"{_LETTER}|{_TIE}")
_ANSWER = r"(?i:answer\s+)?"
_LABEL = r"(?:(?:final\s+)?(?:answer|verdict|choice|decision|winner)\s*(?:is\s*)?[:-]?\s*)"
# A line holding nothing but a verdict, maybe labelled: "B", "Verdict: B", "(a)", "Tie."
_LONE_LINE = re.compile(rf"{_LABEL}?\(?(a|b|tie)\)?[.!]?", re.IGNORECASE)
# Sentences that say which answer is better, each capturing its verdict.
_BETTER = r"(?:better|best|preferred|superior|stronger)"
_STATEMENTS = [re.compile(pattern) for pattern in (
    rf"({_LETTER}) (?i:is (?:the |clearly |much |slightly )?{_BETTER}|wins)",
    rf"\b(?i:{_BETTER} (?:answer|one|response) is) {_ANSWER}({_LETTER})",
    rf"\b(?i:pick|choose|prefer|select|go with|vote for) {_ANSWER}({_LETTER})",
    rf"\b(?i:verdict|final answer|winner|decision)\s*(?i:is)?\s*[:-]?\s*{_ANSWER}({_LETTER}|{_TIE})",
    rf"\b(?i:it is|it's|this is) a ({_TIE})",
)]
# The words that may follow the "A" of a verdict ("A is ...", "A or B"); another word after a sentence's
# first "A" makes it the article ("A better answer would ...").
_AFTER_LETTER = {"is", "was", "wins", "won", "has", "and", "or", "vs", "versus", "than"}
_NEXT_WORD = re.compile(r"\s+([a-z]+)")
_OPTION_LIST = re.compile(r"\s*(?:,|/|(?i:or|and))\s*")  # between two tokens: "A, B or tie" names options
_OPENING = re.compile(rf"\W*{_ANSWER}")
_AFTER_OPENING = re.compile(r"\s*(?:[.,:;!)]|$)")
_CLOSING = re.compile(r"[\s.!)'\"”’]*")


def _one(verdicts: list[str]) -> str | None:
    verdicts = ["tie" if verdict.lower() == "tie" else verdict.upper() for verdict in verdicts]
    return verdicts[0] if len(set(verdicts)) == 1 else None


def _tokens(text: str) -> list[re.Match]:
    """The verdict tokens of `text`, without the article "A" that starts a sentence."""
    tokens = []
    for token in _VERDICT.finditer(text):
        before, after = text[: token.start()].rstrip(" \t"), _NEXT_WORD.match(text, token.end())
        sentence_start = not before or before[-1] in ".!?;:\n"
        if not (token.group() == "A" and sentence_start and after and after.group(1) not in _AFTER_LETTER):
            tokens.append(token)
    return tokens


def _at_the_ends(text: str, tokens: list[re.Match]) -> list[re.Match]:
    """The token opening the reply ("A. Because ...") and the one closing it ("..., so B."), unless it is one
    of a list of options."""
    listed = [bool(_OPTION_LIST.fullmatch(text, a.end(), b.start())) for a, b in itertools.pairwise(tokens)] or [False]
    first, last = tokens[0], tokens[-1]
    ends = []
    if _OPENING.fullmatch(text, 0, first.start()) and _AFTER_OPENING.match(text, first.end()) and not listed[0]:
        ends.append(first)
    if _CLOSING.fullmatch(text, last.end()) and not listed[-1]:
        ends.append(last)
    return ends


def parse_choice(reply: str) -> str | None:
    """'A', 'B' or 'tie' from the judge's reply; None when it names no verdict or several (an unparsed reply).
    In order: a line that is only a verdict; a sentence saying which is better ("B is better", "I pick B",
    "Verdict: tie"); a verdict opening or closing the reply; the one verdict token it holds."""
    text = re.sub(r"[*`#_]", "", reply).strip()  # markdown emphasis: "**Verdict:** B"
    lone = [match.group(1) for line in text.splitlines() if (match := _LONE_LINE.fullmatch(line.strip(" \t'\"“”‘’")))]
    if lone:
        return _one(lone)
    stated = [match.group(1) for pattern in _STATEMENTS for match in pattern.finditer(text)]
    if stated:
        return _one(stated)
    tokens = _tokens(text)
    return _one([token.group() for token in _at_the_ends(text, tokens) or tokens]) if tokens else None


def judge_pairs(ask: Ask, samples: list[dict], rubric: str) -> list[dict]:
    """Per sample: the choice with base as A, the choice with tuned as A, the combined winner, and how many of
    its two replies named no clear verdict."""
    prompts = []
    for sample in samples:
        fields = {"rubric": rubric, "question": sample["prompt"], "reference": sample["reference"]}
        prompts.append(TEMPLATE.format(**fields, a=sample["base"], b=sample["tuned"]))
        prompts.append(TEMPLATE.format(**fields, a=sample["tuned"], b=sample["base"]))
    choices = [parse_choice(reply) for reply in ask(prompts)]
    verdicts = []
    for index in range(len(samples)):
        # An unparsed reply counts as a tie; it is no agreement between the orders, so no pair with one is consistent.
        unparsed = choices[2 * index : 2 * index + 2].count(None)
        first = {"A": "base", "B": "tuned"}.get(choices[2 * index], "tie")
        swapped = {"A": "tuned", "B": "base"}.get(choices[2 * index + 1], "tie")
        verdicts.append({"base_first": first, "tuned_first": swapped, "winner": first if first == swapped else "tie",
                         "consistent": first == swapped and not unparsed, "unparsed": unparsed})
    return verdicts


def summarise(verdicts: list[dict], human: dict[int, str] | None = None) -> dict:
    wins = Counter(verdict["winner"] for verdict in verdicts)
    summary = {
        "items": len(verdicts),
        "wins": {name: wins.get(name, 0) for name in ("tuned", "base", "tie")},
        "tuned_win_rate": tuned_win_rate(wins),
        "consistency": sum(verdict["consistent"] for verdict in verdicts) / len(verdicts),
        "unparsed": sum(verdict["unparsed"] for verdict in verdicts),
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
