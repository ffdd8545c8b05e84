"""Supervised fine-tuning on conversations: the loss covers assistant turns only (core/chat.py
renders and masks them). Raw text rows train as causal LM per document. The default objective."""
from __future__ import annotations

from domaintune.config.objectives import SftConfig

SUMMARY = "conversations, prompt/completion or labelled rows; loss on the answers only. The default for task data."
Config = SftConfig  # the registry and the recipe know an objective by its Config
