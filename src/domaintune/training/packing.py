"""How batches are built and the loss is computed: the choices that make training fast on a CPU.

- Padding-free packing: the examples of a batch are packed (first-fit decreasing) into rows of
  at most `row_tokens` tokens, each row flattened with position ids restarting per example
  (transformers' `DataCollatorWithFlattening`); this is exact only with the KV cache off, which
  training requires anyway. Attention stays within each example: `packed_attention` runs causal
  SDPA on each example's span of the row (found from the position ids) instead of one
  row-length-squared block-diagonal mask, so attention costs the sum of the examples' squared
  lengths, not the row's (a quarter of it for four examples). Rows are still capped: one
  3,000-token row took 2.5x the memory and 7x the time of 800 tokens with the mask.
- Supervised-positions LM head: with SFT most tokens are prompt tokens whose labels are
  masked, yet a plain forward projects every position onto the 49k-word vocabulary. The
  collator passes a boolean `logits_to_keep` mask so the model computes logits only where the
  next token is supervised, and the loss below is taken over exactly those positions.
"""
from __future__ import annotations

import inspect

import torch
from transformers import AttentionInterface, DataCollatorForSeq2Seq, DataCollatorWithFlattening
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from domaintune.core.chat import IGNORE_INDEX

PACKED_ATTENTION = "domaintune_packed"


def packed_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, position_ids=None, **kwargs):
    """Causal attention per example of a packed row; anything else (a padding mask, decoding with a
    KV cache) goes to transformers' own SDPA path. Tensors are (batch, heads, tokens, head_dim)."""
    if attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    length = query.shape[2]
    rows = []
    for row in range(query.shape[0]):
        starts = torch.nonzero(position_ids[row] == 0).flatten().tolist()
        bounds = sorted({0, *starts, length})
        rows.append(torch.cat([
            torch.nn.functional.scaled_dot_product_attention(
                query[row : row + 1, :, start:end], key[row : row + 1, :, start:end], value[row : row + 1, :, start:end],
                dropout_p=dropout, scale=scaling, is_causal=True,
            )
            for start, end in zip(bounds, bounds[1:])
        ], dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


def _packed_attention_mask(*, attention_mask=None, **kwargs):
    # No mask to build for packed rows (packed_attention splits them); a padding mask is SDPA's as usual.
    return None if attention_mask is None else sdpa_mask(attention_mask=attention_mask, **kwargs)


AttentionInterface.register(PACKED_ATTENTION, packed_attention)
AttentionMaskInterface.register(PACKED_ATTENTION, _packed_attention_mask)


def pack_rows(lengths: list[int], row_tokens: int) -> list[list[int]]:
    """Indices of examples grouped into rows of at most `row_tokens` (first-fit decreasing);
    an example longer than that gets a row of its own."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((r for r, free in enumerate(room) if free >= lengths[index]), None)
        if slot is None:
            rows.append([index])
            room.append(row_tokens - lengths[index])
        else:
            rows[slot].append(index)
            room[slot] -= lengths[index]
    return [sorted(row) for row in rows]  # keep the batch's own order inside a row


class PackedCollator:
    """Packs features into padding-free rows; optionally asks for logits only where they are needed."""

    def __init__(self, supervised_logits_only: bool, row_tokens: int = 1024, pad_token_id: int = 0):
        self.flatten = DataCollatorWithFlattening(separator_id=IGNORE_INDEX)
        self.supervised_logits_only = supervised_logits_only
        self.row_tokens = row_tokens
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        groups = pack_rows([len(f["input_ids"]) for f in features], self.row_tokens)
        rows = [self.flatten([{"input_ids": features[i]["input_ids"], "labels": features[i]["labels"]} for i in g]) for g in groups]
        width = max(row["input_ids"].shape[1] for row in rows)
        batch = {
            "input_ids": torch.cat([self._pad(row["input_ids"], width, self.pad_token_id) for row in rows]),
            "labels": torch.cat([self._pad(row["labels"], width, IGNORE_INDEX) for row in rows]),
            # Padding gets positions 0, 1, ... of its own: a separate "sequence" nothing attends to.
            "position_ids": torch.cat([self._pad(row["position_ids"], width, None) for row in rows]),
        }
        if self.supervised_logits_only:
            # Position t predicts token t+1, so keep t wherever label t+1 is supervised.
            keep = torch.zeros_like(batch["labels"], dtype=torch.bool)
            keep[:, :-1] = batch["labels"][:, 1:] != IGNORE_INDEX
            batch["logits_to_keep"] = keep
        return batch

    @staticmethod
    def _pad(values: torch.Tensor, width: int, fill: int | None) -> torch.Tensor:
        missing = width - values.shape[1]
        if missing == 0:
            return values
        tail = torch.arange(missing)[None] if fill is None else torch.full((1, missing), fill)
        return torch.cat([values, tail.to(values.dtype)], dim=1)


def supervised_positions_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy for logits computed at supervised positions only (see PackedCollator).

    A boolean `logits_to_keep` makes the model return logits flattened row by row, which is
    the order boolean indexing gives the targets here."""
    next_tokens = labels[:, 1:]
    targets = next_tokens[next_tokens != IGNORE_INDEX]
    logits = outputs.logits.reshape(-1, outputs.logits.shape[-1]).float()
    loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    # Trainer passes the supervised-token count across accumulated batches, so the
    # accumulated gradient equals that of one large batch.
    return loss / (num_items_in_batch if num_items_in_batch is not None else targets.numel())


def accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def batching(model, tokenizer, packing: bool, supervised_logits_only: bool, row_tokens: int = 1024) -> tuple[object, object | None]:
    """The data collator and loss function for a run: (collator, compute_loss_func or None)."""
    if not packing:
        return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX), None
    restrict = supervised_logits_only and accepts_logits_to_keep(model)
    if model.config._attn_implementation == "sdpa":  # an explicit eager/flash choice is left alone
        model.config._attn_implementation = PACKED_ATTENTION
    collator = PackedCollator(restrict, row_tokens=row_tokens, pad_token_id=tokenizer.pad_token_id)
    return collator, supervised_positions_loss if restrict else None
