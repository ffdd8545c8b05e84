"""The playground: chat with a run's tuned model and its base side by side, both answers streamed
through the one generation backend (models.generation), and a blind mode whose choices go into the
run's feedback store (evaluation.feedback, the store `domaintune feedback` uses).

Each side keeps its own conversation (its own earlier answers), as in a chatbot arena; the last
MAX_TURNS turns are sent. In blind mode the two answers are shown as A and B in a random order, stored
as a base-vs-tuned item of RUN/eval/feedback.db as soon as both are written (so an item left unjudged
can still be judged on `domaintune feedback serve`), and the choice is recorded by record_choice.
The stored prompt is the tuned side's conversation: the model preference training goes on to tune.
"""
from __future__ import annotations

import json
import random
import secrets
import threading
from collections import OrderedDict
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from domaintune.core.chat import render
from domaintune.core.errors import DomaintuneError
from domaintune.storage.rundir import RunDir

MAX_MESSAGE_CHARS = 2000
MAX_TURNS = 6  # earlier turns each side sees; older ones are left out of the prompt
MAX_NEW_TOKENS = 512
MODELS_KEPT = 4  # generators in memory: base and tuned of two runs
CONVERSATIONS_KEPT = 64
SIDES = ("base", "tuned")


@dataclass
class Conversation:
    run: Path
    turns: list[dict] = field(default_factory=list)  # {"user", "base", "tuned"}

    def messages(self, side: str, message: str) -> list[dict]:
        history = [[{"role": "user", "content": turn["user"]}, {"role": "assistant", "content": turn[side]}]
                   for turn in self.turns[-MAX_TURNS:]]
        return [item for pair in history for item in pair] + [{"role": "user", "content": message}]


def _event(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class Arena:
    """Loaded generators (least recently used dropped past `capacity`) and the open conversations."""

    def __init__(self, capacity: int = MODELS_KEPT, seed: int | None = None):
        self.capacity = capacity
        self.models: OrderedDict[tuple, object] = OrderedDict()
        self.conversations: OrderedDict[str, Conversation] = OrderedDict()
        self.lock = threading.Lock()  # one generation at a time: the CPU is shared, a torch model is not re-entrant
        self.rng = random.Random(seed)

    def generator(self, run: RunDir, side: str):
        from domaintune.models.generation import open_generator

        recipe = run.recipe()
        if side == "base":
            key = ("base", recipe.model.name, recipe.model.revision, recipe.inference.engine)
        else:  # a run trained again has new weights: its training.json changes with them
            key = ("tuned", str(run.root), (run.model / "training.json").stat().st_mtime_ns, recipe.inference.engine)
        if key in self.models:
            self.models.move_to_end(key)
            return self.models[key]
        generator = open_generator(recipe.model, recipe.inference, model_dir=run.model if side == "tuned" else None,
                                   exact=False)
        self.models[key] = generator
        while len(self.models) > self.capacity:
            self.models.popitem(last=False)
        return generator

    def conversation(self, run: RunDir, conversation_id: str) -> tuple[str, Conversation]:
        """The conversation `conversation_id` of this run; a new one for an empty or unknown id."""
        found = self.conversations.get(conversation_id)
        if found is None or found.run != run.root:
            conversation_id, found = secrets.token_urlsafe(9), Conversation(run.root)
            self.conversations[conversation_id] = found
            while len(self.conversations) > CONVERSATIONS_KEPT:
                self.conversations.popitem(last=False)
        self.conversations.move_to_end(conversation_id)
        return conversation_id, found

    def chat(self, run: RunDir, conversation_id: str, message: str, blind: bool, max_new_tokens: int) -> Iterator[str]:
        """Server-sent events: `start` (the conversation and the columns in the order they are written),
        `piece` and `answer` per column, `item` (blind: the stored item to choose on), `error`, `end`.
        A message or run the arena can't take is refused here, before the stream starts."""
        if not message.strip():
            raise DomaintuneError("message: empty")
        if len(message) > MAX_MESSAGE_CHARS:
            raise DomaintuneError(f"message: {len(message):,} characters; the arena takes at most {MAX_MESSAGE_CHARS:,}")
        if not (run.model / "training.json").is_file():
            raise DomaintuneError(f"{run.root.name}: not trained yet; the arena needs its tuned model")
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise DomaintuneError(f"max_new_tokens: 1 to {MAX_NEW_TOKENS}, not {max_new_tokens}")
        return self._stream(run, *self.conversation(run, conversation_id), message, blind, max_new_tokens)

    def _stream(self, run: RunDir, conversation_id: str, conversation: Conversation, message: str, blind: bool,
                max_new_tokens: int) -> Iterator[str]:
        order = list(SIDES)
        if blind:
            self.rng.shuffle(order)
        columns = dict(zip(("A", "B"), order)) if blind else {side: side for side in SIDES}
        yield _event("start", {"conversation": conversation_id, "columns": list(columns), "blind": blind})
        answers: dict[str, str] = {}
        with self.lock:
            for column, side in columns.items():
                try:
                    generator = self.generator(run, side)
                    prompt = render(generator.tokenizer, conversation.messages(side, message), add_generation_prompt=True)
                    pieces = []
                    with closing(generator.stream(prompt, max_new_tokens)) as stream:  # this closed, it stops too
                        for piece in stream:
                            pieces.append(piece)
                            yield _event("piece", {"column": column, "text": piece})
                except Exception as error:  # noqa: BLE001 - the page shows why, the stream ends cleanly
                    yield _event("error", {"message": f"{side} model: {error}"})
                    return
                answers[side] = "".join(pieces).strip()
                yield _event("answer", {"column": column, "text": answers[side]})
        if blind:
            from domaintune.api import feedback_db
            from domaintune.evaluation.feedback import add_pair

            try:
                shown = {side: answers[side] for side in columns.values()}  # slot 0 is A
                item = add_pair(feedback_db(run.root), run.root, conversation.messages("tuned", message), shown)
            except DomaintuneError as error:
                yield _event("error", {"message": f"not recorded: {error}"})
            else:
                yield _event("item", {"item": item})
        conversation.turns.append({"user": message, **answers})
        yield _event("end", {})

