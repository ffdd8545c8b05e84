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
- On a GPU the same recipe keys pick another attention and batch layout (`packed_attention_for`):
  the per-example loop above reads the position ids back to the host in every layer, which stalls
  a GPU, so there the collator works out everything that needs the examples' boundaries on the
  host (a block-causal mask, or flash-attention's cumulative lengths, and integer LM-head
  positions) and the forward and loss run without a device synchronisation.
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface, DataCollatorForSeq2Seq, DataCollatorWithFlattening
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from domaintune.core.chat import IGNORE_INDEX
from domaintune.models.inference import accepts_logits_to_keep

PACKED_ATTENTION = "domaintune_packed"
FLASH_ATTENTION = "flash_attention_2"


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
    """Packs features into padding-free rows; optionally asks for logits only where they are needed.

    The layout follows the attention that will read it (`packed_attention_for`): rows of at most
    `row_tokens` with a boolean LM-head mask for `packed_attention` (and any other attention);
    the same rows plus a block-causal mask for `sdpa`; the whole batch as one row with
    flash-attention's cumulative lengths for `flash_attention_2`. The last two keep the LM-head
    positions as integers (see `supervised_order`), so nothing in the forward reads a device tensor back."""

    def __init__(self, supervised_logits_only: bool, row_tokens: int = 1024, pad_token_id: int = 0,
                 attention: str = PACKED_ATTENTION):
        self.flatten = DataCollatorWithFlattening(
            separator_id=IGNORE_INDEX, return_flash_attn_kwargs=attention == FLASH_ATTENTION
        )
        self.supervised_logits_only = supervised_logits_only
        self.row_tokens = row_tokens
        self.pad_token_id = pad_token_id
        self.attention = attention

    def __call__(self, features: list[dict]) -> dict:
        if self.attention == FLASH_ATTENTION:
            # Variable-length kernels cost what the examples cost, however long the row: one row, no cap, no padding.
            batch = self.flatten([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        else:
            batch = self._rows(features)
        if self.attention == "sdpa":
            batch["attention_mask"] = block_causal_mask(batch["position_ids"])
        if self.supervised_logits_only:
            batch["logits_to_keep"] = self._logits_to_keep(batch["labels"])
        return batch

    def _rows(self, features: list[dict]) -> dict:
        groups = pack_rows([len(f["input_ids"]) for f in features], self.row_tokens)
        rows = [self.flatten([{"input_ids": features[i]["input_ids"], "labels": features[i]["labels"]} for i in g]) for g in groups]
        width = max(row["input_ids"].shape[1] for row in rows)
        return {
            "input_ids": torch.cat([self._pad(row["input_ids"], width, self.pad_token_id) for row in rows]),
            "labels": torch.cat([self._pad(row["labels"], width, IGNORE_INDEX) for row in rows]),
            # Padding gets positions 0, 1, ... of its own: a separate "sequence" nothing attends to.
            "position_ids": torch.cat([self._pad(row["position_ids"], width, None) for row in rows]),
        }

    def _logits_to_keep(self, labels: torch.Tensor) -> torch.Tensor:
        if self.attention in ("sdpa", FLASH_ATTENTION):
            # Integer positions, the same count per row: the model gathers them without a device sync.
            width = int((next_token_labels(labels) != IGNORE_INDEX).sum(dim=1).max())
            return supervised_order(labels, width)
        # Position t predicts token t+1, so keep t wherever label t+1 is supervised.
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
        return keep

    @staticmethod
    def _pad(values: torch.Tensor, width: int, fill: int | None) -> torch.Tensor:
        missing = width - values.shape[1]
        if missing == 0:
            return values
        tail = torch.arange(missing)[None] if fill is None else torch.full((1, missing), fill)
        return torch.cat([values, tail.to(values.dtype)], dim=1)


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """(rows, 1, tokens, tokens), True where a token may attend: earlier tokens of its own example, which
    starts where the position ids restart at 0. Built on the host, so transformers need not read the
    position ids back from the GPU to find the examples."""
    example = (position_ids == 0).cumsum(dim=1)
    causal = torch.ones(position_ids.shape[1], position_ids.shape[1], dtype=torch.bool).tril()
    return ((example[:, :, None] == example[:, None, :]) & causal)[:, None]


def next_token_labels(labels: torch.Tensor) -> torch.Tensor:
    """The label each position predicts (position t: label t+1); the last position predicts nothing."""
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], dim=1)


def supervised_order(labels: torch.Tensor, width: int) -> torch.Tensor:
    """Per row, the first `width` positions in this order: those whose next token is supervised, in
    sequence order, then the others. The collator (on the host) and the loss (on the device) compute
    it alike, so the logits the model returns and the targets the loss takes line up without a sync."""
    unsupervised = (next_token_labels(labels) == IGNORE_INDEX).to(torch.uint8)
    return torch.argsort(unsupervised, dim=1, stable=True)[:, :width]


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


def ordered_supervised_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """Cross-entropy for logits computed at integer `logits_to_keep` positions (`supervised_order`): the
    same loss as `supervised_positions_loss`, with no boolean indexing (which reads its count back from
    the device). A row's slots past its own supervised positions have ignored targets."""
    width = outputs.logits.shape[1]
    targets = next_token_labels(labels).gather(1, supervised_order(labels, width))
    logits = outputs.logits.reshape(-1, outputs.logits.shape[-1]).float()
    loss = torch.nn.functional.cross_entropy(logits, targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / (num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum())


def packed_attention_for(device: torch.device | str, bf16: bool) -> str:
    """The attention packed rows use on `device` (the batch layout follows it, see PackedCollator).

    - CPU: `packed_attention`, SDPA per example. A CPU pays for every score a mask hides, so skipping
      them (the sum of the examples' squared lengths, not the row's) measured fastest there, and its
      per-row host loop waits for nothing.
    - CUDA with the flash-attn package and bf16: its variable-length kernels (`flash_attention_2`) on
      the whole batch as one row, the examples' bounds handed over by the collator: no mask, no padding.
      flash-attn computes in bf16/fp16 only, hence the bf16 condition. Hugging Face's `kernels` package
      would fetch the same kernels from the hub at run time, which domaintune does not do by default.
    - any other CUDA: transformers' `sdpa` with the collator's block-causal mask: one batched kernel
      call per layer. On a GPU the per-example loop costs a device sync per row and layer, which made
      training 5x slower than padded batches (measured on an H200, issue 19).
    """
    from transformers.utils import is_flash_attn_2_available

    if torch.device(device).type != "cuda":
        return PACKED_ATTENTION
    return FLASH_ATTENTION if bf16 and is_flash_attn_2_available() else "sdpa"


def batching(model, tokenizer, packing: bool, supervised_logits_only: bool, row_tokens: int = 1024,
             device: torch.device | str = "cpu", bf16: bool = False) -> tuple[object, object | None]:
    """The data collator and loss function for a run on `device`: (collator, compute_loss_func or None)."""
    if not packing:
        return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX), None
    restrict = supervised_logits_only and accepts_logits_to_keep(model)
    if model.config._attn_implementation == "sdpa":  # an explicit eager/flash choice is left alone
        model.config._attn_implementation = packed_attention_for(device, bf16)
    attention = model.config._attn_implementation
    collator = PackedCollator(restrict, row_tokens=row_tokens, pad_token_id=tokenizer.pad_token_id, attention=attention)
    if not restrict:
        return collator, None
    return collator, ordered_supervised_loss if attention in ("sdpa", FLASH_ATTENTION) else supervised_positions_loss
