"""Running a model without training it: batched generation and token-weighted losses, shared by
evaluation, training's domain perplexity, synthesis, selection and the judge."""
from __future__ import annotations

import contextlib
import inspect
import queue
import threading
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from domaintune.core.chat import IGNORE_INDEX, encode_rows


def model_device(model) -> torch.device:
    """The device of the model's weights: its inputs go there."""
    return next(model.parameters()).device


def device_named(model) -> dict:
    """{"device": ...} where the model is not on the CPU, for the engine facts results and metrics report."""
    device = model_device(model).type
    return {"device": device} if device != "cpu" else {}


def autocast(bf16: bool, device: torch.device | str = "cpu"):
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def row_losses(model, tokenizer, rows: list[dict], max_length: int, batch_size: int, bf16: bool) -> np.ndarray | None:
    """Per row: summed cross-entropy over its supervised tokens and their count, shape (2, rows).

    Their sums' ratio is the loss training optimises; kept per row so the bootstrap can resample rows.
    """
    encoded = encode_rows(tokenizer, rows, max_length)
    return example_losses(model, tokenizer, encoded, batch_size, bf16) if encoded else None


def accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def is_prompt_learning(model) -> bool:
    """Whether a peft prompt-learning adapter (a soft prompt, a prefix) is active on `model`: it adds virtual
    tokens, or their keys and values, before every input instead of changing weights."""
    return bool(getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False))


def prepends_embeddings(model) -> bool:
    """Whether the active prompt-learning adapter puts its virtual tokens' embeddings before the input ids (prompt
    tuning, p-tuning; prefix tuning puts keys and values in the cache): the base model then runs over more
    positions than it is given, and peft drops the position ids it is handed."""
    return is_prompt_learning(model) and model.active_peft_config.peft_type not in ("PREFIX_TUNING", "CARTRIDGE")


@torch.no_grad()
def example_losses(model, tokenizer, examples: list[dict], batch_size: int, bf16: bool) -> np.ndarray:
    """Per encoded example: summed cross-entropy over its supervised tokens and their count, shape (2, n).

    Batches hold examples of similar length (less padding), and where the model takes `logits_to_keep`
    the 49k-word LM head and the softmax run only at positions whose next token is supervised in some
    row of the batch: in SFT rows most tokens are prompt, so most of that work is skipped. Same numbers.
    Not under a soft prompt: the positions would count its virtual tokens, which come first."""
    from transformers import DataCollatorForSeq2Seq

    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)
    model.eval()
    supervised_only = accepts_logits_to_keep(model) and not prepends_embeddings(model)
    device = model_device(model)
    order = sorted(range(len(examples)), key=lambda index: len(examples[index]["input_ids"]))
    sums, counts = [0.0] * len(examples), [0] * len(examples)
    for start in range(0, len(examples), batch_size):
        indices = order[start : start + batch_size]
        batch = collate([examples[index] for index in indices]).to(device)
        targets = batch["labels"][:, 1:]  # logits at position t predict the token at t + 1
        positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)
        if positions.numel() == 0:
            continue
        keep = {"logits_to_keep": positions} if supervised_only else {}
        with autocast(bf16, device):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                           **keep).logits
        if not supervised_only:
            logits = logits[:, positions]
        targets = targets[:, positions]
        losses = torch.nn.functional.cross_entropy(
            logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
        )
        row_counts = (targets != IGNORE_INDEX).sum(dim=1).tolist()
        for index, total, count in zip(indices, losses.sum(dim=1).tolist(), row_counts):
            sums[index], counts[index] = total, count
    return np.array([sums, counts], dtype=float)


def mean_loss(losses: np.ndarray | None) -> float | None:
    return float(losses[0].sum() / losses[1].sum()) if losses is not None else None


def perplexity(loss):
    """exp(loss), capped so a diverged model does not overflow; numbers or numpy arrays."""
    return np.exp(np.minimum(loss, 50.0)) if loss is not None else None


def block_loss(model, blocks, batch_size: int = 4) -> float | None:
    """Mean next-token cross-entropy over all tokens of the blocks (equal-length blocks batch without padding)."""
    if len(blocks) == 0:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    device = model_device(model)
    with torch.no_grad():
        for block in blocks:
            ids = torch.tensor([block["input_ids"]], device=device)
            logits = model(input_ids=ids, use_cache=False).logits[:, -ids.shape[1] :].float()
            total += torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    model.train(was_training)
    return total / count


def block_loss_before_training(model, blocks) -> float | None:
    """block_loss of the base model under `model`'s fresh adapter: a prompt-learning adapter is switched off
    for it, as a random soft prompt or prefix is not the identity every other adapter starts as."""
    with model.disable_adapter() if is_prompt_learning(model) else contextlib.nullcontext():
        return block_loss(model, blocks)


def until_stop(text: str, stops: Iterable[str]) -> str:
    """The text before the first of `stops` it holds (all of it where it holds none)."""
    cut = min((text.find(stop) for stop in stops if stop in text), default=-1)
    return text[:cut] if cut >= 0 else text


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, bf16: bool,
             temperature: float | None = None, stop: Sequence[str] = ()) -> list[str]:
    """Completions for rendered prompts, greedy or sampled at `temperature`, each ending before the first
    of `stop` it reaches (decoding ends there too); prompts of similar length are batched together (under a
    soft prompt, one at a time)."""
    if prepends_embeddings(model):
        batch_size = 1  # peft drops a soft prompt's position ids: a left-padded row would be read at shifted ones
    model.eval()
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    device = model_device(model)
    try:
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = tokenizer([prompts[i] for i in indices], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            with autocast(bf16, device):
                generated = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=temperature is not None,
                    **({"temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature is not None else {}),
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **({"stop_strings": list(stop), "tokenizer": tokenizer} if stop else {}),
                )
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
            for i, text in zip(indices, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                outputs[i] = until_stop(text, stop).strip()
    finally:
        tokenizer.padding_side = previous_side
    return outputs


def stream_token_ids(model, tokenizer, prompt: str, max_new_tokens: int, bf16: bool,
                     temperature: float | None = None) -> Iterator[int]:
    """The new token ids of one completion as `generate` makes them (it runs in a thread); closing the
    iterator early (a reader that went away) stops the generation at its next token."""
    from transformers import StoppingCriteria, StoppingCriteriaList
    from transformers.generation.streamers import BaseStreamer

    tokens: queue.Queue = queue.Queue()
    stopped = threading.Event()
    done = object()

    class Streamer(BaseStreamer):
        prompt_seen = False

        def put(self, value):
            if not self.prompt_seen:  # generate first hands over the prompt itself
                self.prompt_seen = True
                return
            for token in value.reshape(-1).tolist():
                tokens.put(token)

        def end(self):
            tokens.put(done)

    class Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), stopped.is_set(), dtype=torch.bool, device=input_ids.device)

    device = model_device(model)
    batch = tokenizer([prompt], return_tensors="pt", add_special_tokens=False).to(device)
    failure: list[BaseException] = []

    def run():
        try:
            with torch.no_grad(), autocast(bf16, device):
                model.generate(
                    **batch, max_new_tokens=max_new_tokens, do_sample=temperature is not None,
                    **({"temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature is not None else {}),
                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                    streamer=Streamer(), stopping_criteria=StoppingCriteriaList([Stop()]),
                )
        except BaseException as error:  # noqa: BLE001 - handed to the reader, which raises it
            failure.append(error)
            tokens.put(done)

    model.eval()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        while (token := tokens.get()) is not done:
            yield token
        if failure:
            raise failure[0]
    finally:
        stopped.set()
        worker.join()
