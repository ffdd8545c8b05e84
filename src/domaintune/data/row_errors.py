"""Why a row was rejected: the error a row that does not fit its format raises, and the hint shown when
one reason rejects most of a file."""
from __future__ import annotations

import re


class RowError(ValueError):
    """A row that does not fit its format; `reason` says exactly what is wrong."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# What to change when many rows are rejected for one reason, by the reason's wording.
_FIX_HINTS = (
    (r"\.(role|from): expected .* here",
     "user and assistant turns must alternate, starting with the user's and ending with the assistant's "
     "(system messages may come anywhere, tool messages answer an assistant's tool_calls); join consecutive "
     "messages of one speaker into one, or set data.format if the file is in another layout"),
    (r"the last message must be the assistant's",
     "each row ends with the answer the model learns (an assistant message); a row ending with a question "
     "has nothing to learn from"),
    (r"unknown role",
     "chat roles are system, developer, user, assistant and tool; ShareGPT's are system, human and gpt"),
    (r"^missing column",
     "map the file's column names onto the format's with data.columns (e.g. {output: answer}), or set data.format"),
    (r"\.weight: ", "OpenAI's weight is 0 (do not train on this turn) or 1 (train on it), on assistant messages only"),
    (r"^not valid JSON", "a .jsonl file holds one JSON object per line; a file holding one JSON array is a .json file"),
)


def fix_hint(reason: str) -> str | None:
    """How to fix rows rejected for `reason`, where a reason alone does not say it."""
    return next((hint for pattern, hint in _FIX_HINTS if re.search(pattern, reason)), None)


def reason_kind(reason: str) -> str:
    """A rejection reason without its message index: the same mistake at messages[1] and messages[3]."""
    return re.sub(r"\[\d+\]", "[*]", reason)
