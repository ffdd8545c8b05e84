"""What every recipe section shares: unknown keys are errors, assignments are validated."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def off_is_a_word(value: Any) -> Any:
    # YAML reads a bare `off` as false; in these settings the user meant the word.
    return "off" if value is False else value
