"""Synthetic instruction data from documents: `domaintune data synthesize RECIPE`.

Documents are chunked like training documents; a local generator model writes one question
(or task) per chunk, then answers it with the chunk in view. Pairs are kept only if both replies
are non-empty, the question is a question (ends with ?) and not a repeat of an earlier one, and
the answer is grounded: enough of the answer's content words occur in the chunk, a lexical check
that catches most invented answers of a small model. Kept pairs are written in the recipe's data
format with their provenance; the others go to `<output>.removed.jsonl` with the reason.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from rich.console import Console

from domaintune.config import DataConfig, Recipe
from domaintune.core.errors import DomaintuneError
from domaintune.data.cleaning import normalise_text
from domaintune.data.documents import is_document, read_document_rows
from domaintune.data.formats import column
from domaintune.data.text_generator import Generate, load_generator
from domaintune.models.loading import load_tokenizer
from domaintune.storage.jsonl import write_jsonl

# Two steps, because a 135M model asked for "Question: ... Answer: ..." in one reply mostly stops after
# "Answer:": first it asks about the chunk, then it answers its own question with the chunk in view.
ASK = {
    "qa": "Read the text below and write one question that the text answers. Reply with the question only.",
    "instruction": "Read the text below and write one task that a colleague could ask you to do with it "
    "(summarise, explain, list, compare). Reply with the task only.",
}
ANSWER = {
    "qa": "Answer the question using only facts from the text. Reply with the answer only.",
    "instruction": "Do the task using only facts from the text. Reply with the result only.",
}
LABELS = {"qa": ("Question", "Answer"), "instruction": ("Task", "Result")}
_CONTENT_WORD = re.compile(r"[^\W_]{4,}|\d+")  # words of 4+ letters and numbers carry the facts


def clean_reply(reply: str, label: str) -> str:
    """The reply without markdown and without a leading `Question:`-style label; the first paragraph only."""
    reply = re.sub(r"[*#]+", "", reply).strip()
    reply = re.sub(rf"^\s*{label}\s*:\s*", "", reply, flags=re.IGNORECASE)
    return normalise_text(reply.split("\n\n")[0])


def grounding(answer: str, chunk: str) -> float:
    """Share of the answer's content words that occur in the chunk (1.0: every fact is from the chunk)."""
    words = [word.lower() for word in _CONTENT_WORD.findall(answer)]
    if not words:
        return 0.0
    vocabulary = {word.lower() for word in _CONTENT_WORD.findall(chunk)}
    return sum(word in vocabulary for word in words) / len(words)


def to_format(prompt: str, answer: str, config: DataConfig) -> dict:
    """The pair as a row of the recipe's data format, with the user's column names."""
    fmt = "chat" if config.format == "auto" else config.format
    if fmt == "chat":
        return {column(config, "messages"): [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
    if fmt == "sharegpt":
        return {column(config, "conversations"): [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]}
    if fmt == "alpaca":
        return {column(config, "instruction"): prompt, column(config, "output"): answer}
    if fmt == "prompt_completion":
        return {column(config, "prompt"): prompt, column(config, "completion"): answer}
    raise DomaintuneError(
        f"data.format {fmt!r}: synthesize writes prompt/answer pairs; use chat, sharegpt, alpaca or prompt_completion"
    )


def _conversation(instruction: str, chunk: str, extra: str = "") -> list[dict]:
    return [{"role": "user", "content": f"{instruction}\n\nText:\n{chunk}{extra}"}]


def synthesize_pairs(chunks: list[dict], generate: Generate, recipe: Recipe) -> tuple[list[dict], list[dict]]:
    """(kept rows in the recipe's format with `provenance`, removed records with `reason`)."""
    config = recipe.data.synthesize
    ask_label, answer_label = LABELS[config.kind]
    prompts = [clean_reply(reply, ask_label) for reply in generate([_conversation(ASK[config.kind], c["text"]) for c in chunks])]
    asked = [(chunk, prompt) for chunk, prompt in zip(chunks, prompts) if prompt]
    answers = generate(
        [_conversation(ANSWER[config.kind], chunk["text"], f"\n\n{ask_label}: {prompt}") for chunk, prompt in asked]
    )
    answer_of = {id(chunk): clean_reply(answer, answer_label) for (chunk, _), answer in zip(asked, answers)}
    kept, removed, seen = [], [], set()
    for chunk, prompt in zip(chunks, prompts):
        where = {key: value for key, value in chunk["source"].items() if key != "line"}  # file, page or section
        provenance = {**where, "chunk": chunk["source"]["line"], "model": config.model or recipe.model.name}
        answer = answer_of.get(id(chunk), "")
        score = grounding(answer, chunk["text"])
        if not prompt or not answer:
            reason = "empty reply"
        elif config.kind == "qa" and not prompt.endswith("?"):
            reason = "not a question"  # the model copied the text or answered instead of asking
        elif prompt.lower() in seen:
            reason = "duplicate question"
        elif score < config.min_grounding:
            reason = f"not grounded: {score:.0%} of the answer's content words are in the chunk < {config.min_grounding:.0%}"
        else:
            seen.add(prompt.lower())
            kept.append({**to_format(prompt, answer, recipe.data), "provenance": {**provenance, "grounding": round(score, 3)}})
            continue
        removed.append({"reason": reason, "prompt": prompt, "answer": answer, "provenance": provenance})
    return kept, removed


def synthesize(recipe: Recipe, generate: Generate | None = None, console: Console | None = None) -> dict:
    """Write the synthetic pairs of the recipe's documents; returns the counts and the output path."""
    console = console or Console(stderr=True)
    config = recipe.data.synthesize
    sources = config.documents or [path for path in recipe.data.train if is_document(path)]
    if not sources:
        raise DomaintuneError("data.synthesize.documents is empty: list documents or folders (PDF, DOCX, HTML, Markdown, text)")
    tokenizer = load_tokenizer(recipe.model)
    chunks, skipped = read_document_rows(
        sources,
        recipe.data.documents.chunk_tokens,
        recipe.data.documents.overlap,
        lambda text: tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"],
        recipe.data.documents.max_member_mb,
    )
    for item in skipped:
        console.print(f"skipped {item['file']}: {item['reason']}", markup=False, highlight=False)
    chunks = chunks[: config.max_chunks] if config.max_chunks else chunks
    if not chunks:
        raise DomaintuneError(f"no readable text in {', '.join(sources)}")
    console.print(f"Generating {config.kind} pairs from {len(chunks)} chunks with {config.model or recipe.model.name}...")
    generate = generate or load_generator(recipe, config.model, config.max_new_tokens, config.batch_size)
    kept, removed = synthesize_pairs(chunks, generate, recipe)
    output = Path(config.output or Path(recipe.output_dir) / f"{recipe.name}-synthetic.jsonl")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(output, kept)
    write_jsonl(output.with_suffix(".removed.jsonl"), removed)
    summary = {
        "output": str(output),
        "documents_skipped": skipped,
        "chunks": len(chunks),
        "kept": len(kept),
        "removed": len(removed),
        "removed_by_reason": dict(Counter(item["reason"].split(":")[0] for item in removed).most_common()),
    }
    console.print(
        f"Synthesized {len(kept)} pairs from {len(chunks)} chunks ({len(removed)} removed: "
        + (", ".join(f"{k} {n}" for k, n in summary["removed_by_reason"].items()) or "none")
        + f"), see {output.with_suffix('.removed.jsonl')}",
        markup=False,
        highlight=False,
    )
    return summary
