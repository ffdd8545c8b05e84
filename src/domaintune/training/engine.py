"""How batches are built and the loss is computed: the choices that make training fast on a CPU.

- Padding-free packing: a batch is flattened into one row with position ids restarting per
  example (transformers' `DataCollatorWithFlattening`), so no compute goes to padding. Attention
  stays within each example because transformers derives a block-diagonal mask from the
  position ids; this is exact only with the KV cache off, which training already requires.
- Supervised-positions LM head: with SFT most tokens are prompt tokens whose labels are
  masked, yet a plain forward projects every position onto the 49k-word vocabulary. The
  packed collator tells the model (`logits_to_keep`) to compute logits only where the next
  token is supervised, and the loss below is taken over exactly those positions.
"""
from __future__ import annotations

import inspect

import torch
from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

from domaintune.objectives.sft import IGNORE_INDEX


class PackedCollator:
    """Flattens features into one padding-free row; optionally asks for logits only where they are needed."""

    def __init__(self, supervised_logits_only: bool):
        self.flatten = DataCollatorWithFlattening(separator_id=IGNORE_INDEX)
        self.supervised_logits_only = supervised_logits_only

    def __call__(self, features: list[dict]) -> dict:
        batch = self.flatten([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        if self.supervised_logits_only:
            # Position t predicts token t+1, so keep t wherever label t+1 is supervised.
            batch["logits_to_keep"] = (batch["labels"][0, 1:] != IGNORE_INDEX).nonzero().squeeze(-1)
        return batch


def supervised_positions_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy for logits computed at supervised positions only (see PackedCollator)."""
    next_tokens = labels[0, 1:]
    targets = next_tokens[next_tokens != IGNORE_INDEX]
    loss = torch.nn.functional.cross_entropy(outputs.logits[0].float(), targets, reduction="sum")
    # Trainer passes the supervised-token count across accumulated batches, so the
    # accumulated gradient equals that of one large batch.
    return loss / (num_items_in_batch if num_items_in_batch is not None else targets.numel())


def accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def batching(model, tokenizer, packing: bool, supervised_logits_only: bool) -> tuple[object, object | None]:
    """The data collator and loss function for a run: (collator, compute_loss_func or None)."""
    if not packing:
        return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX), None
    restrict = supervised_logits_only and accepts_logits_to_keep(model)
    return PackedCollator(restrict), supervised_positions_loss if restrict else None
