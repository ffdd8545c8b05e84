"""The causal LM behind the server on torch: one model with lazily loaded peft adapters (LRU-capped)
and a background worker that batches concurrent requests. Under `--engine auto` it answers the requests
that arrive while others are in progress, and continues the rows CTranslate2 began (load_router.py);
both engines build on batching.py's queue, rows and events. Embedding and classification models: encoders.py.

Batching on torch: the worker takes the oldest pending request, waits a few milliseconds for others for
the same model (base or adapter), prefills them together, left-padded, and decodes them one token
per step with the KV cache. Requests arriving later for that model are prefilled and join the
running batch between steps (continuous batching); a row leaves at an end token, a stop string or
its own max_tokens, and its text is streamed as it grows. A row another engine began (`carried`) is
prefilled with its prompt and the tokens it has, and goes on from there. Requests for another model
wait until the running batch has drained.
"""
from __future__ import annotations

from collections import OrderedDict

from domaintune.config.runtime import cpu_has_bf16, inference_device
from domaintune.models.inference import device_named
from domaintune.serving.batching import BatchingWorker, GenerationRequest, Row, context_length, end_token_ids


def torch_dtype(name: str):
    import torch

    if name == "auto":
        # fp16 is emulated and very slow on CPUs; bf16 only where the CPU has it natively.
        return torch.bfloat16 if torch.cuda.is_available() or cpu_has_bf16() else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[name]


class AdapterPool:
    """One base model; adapters load on first use (peft `load_adapter`) and the least recently used
    is deleted beyond `capacity`. Only the generation worker thread touches the model."""

    def __init__(self, base, adapters: dict[str, str], capacity: int):
        self.model = base
        self.paths = adapters
        self.capacity = max(1, capacity)
        self.loaded: OrderedDict[str, None] = OrderedDict()

    def activate(self, name: str | None):
        """The model to generate with and a context that selects `name` (None: the base model)."""
        import contextlib

        if name is None:
            return self.model, (self.model.disable_adapter() if self.loaded else contextlib.nullcontext())
        self._load(name)
        return self.model, contextlib.nullcontext()

    def _load(self, name: str) -> None:
        """Make `name` the active adapter, loading it (and evicting the least recently used) if needed."""
        from peft import PeftModel

        if name in self.loaded:
            self.loaded.move_to_end(name)
            self.model.set_adapter(name)
            return
        if not self.loaded:
            self.model = PeftModel.from_pretrained(self.model, self.paths[name], adapter_name=name)
        else:
            self.model.load_adapter(self.paths[name], adapter_name=name)
        self.model.set_adapter(name)  # before evicting: deleting the active adapter makes peft pick another
        self.loaded[name] = None
        while len(self.loaded) > self.capacity:  # the new one is loaded first, so one always remains
            oldest, _ = self.loaded.popitem(last=False)
            self.model.delete_adapter(oldest)
        self.model.eval()


class Generator(BatchingWorker):
    """The causal LM on torch, its adapters and the continuous-batching worker thread."""

    def __init__(self, name: str, path: str, adapters: dict[str, str], dtype: str = "auto",
                 max_loaded_adapters: int = 4, max_batch_size: int = 16, batch_wait_ms: float = 5.0,
                 trust_remote_code: bool = False, metrics=None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        super().__init__(max_batch_size, batch_wait_ms, metrics)
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        base = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype(dtype), use_safetensors=True, trust_remote_code=trust_remote_code
        ).to(inference_device()).eval()
        base.config.use_cache = True
        self.context_length = context_length(base.config, self.tokenizer)
        self.eos_ids = end_token_ids(base.generation_config, self.tokenizer)
        self.pool = AdapterPool(base, adapters, max_loaded_adapters)
        self.engine = {"engine": "torch", "compute_type": str(base.dtype).removeprefix("torch."), **device_named(base)}
        self.worker.start()

    @property
    def models(self) -> list[str]:
        return [self.name, *self.pool.paths]

    def _run(self) -> None:
        import torch

        torch.set_grad_enabled(False)
        batch: Batch | None = None
        while True:
            new: list[GenerationRequest] = []
            try:
                if batch is None:
                    first = self._next()
                    if first is None:
                        return
                    new = [first, *self._gather(first.model, self.max_batch_size - 1, self.batch_wait)]
                    batch = Batch(self, first.model)  # loads the adapter on first use
                elif batch.can_join and not self.held:  # requests for another model wait: the batch drains for them
                    new = self._gather(batch.model, self.max_batch_size - len(batch.rows), 0)
                if new:
                    batch.join([request.carried or Row(request, self.tokenizer, self.eos_ids) for request in new])
                batch.step()
            except Exception as error:
                self._fail([*(row.request for row in batch.rows), *new] if batch is not None else new, error)
                if batch is not None:
                    batch.rows = []
            if batch is not None and not batch.rows:
                batch.close()
                batch = None


class Batch:
    """Rows generated together: one model (base or one adapter), a KV cache and a left-padded attention
    mask. New rows are prefilled on their own and join at a step boundary (continuous batching);
    finished rows leave. Positions come from the mask, as `generate` computes them, so each row's
    greedy output is what it would be alone."""

    def __init__(self, generator: Generator, model: str):
        import contextlib

        self.generator = generator
        self.model = model
        self.scope = contextlib.ExitStack()
        self.network, adapter_scope = generator.pool.activate(None if model == generator.name else model)
        self.scope.enter_context(adapter_scope)
        self.rows: list[Row] = []
        self.cache = None
        self.mask = None  # [rows, length]
        self.last = None  # [rows, 1]: each row's latest token, the next step's input
        self.can_join = True

    def close(self) -> None:
        self.scope.close()

    def _forward(self, input_ids, mask, positions, cache, **kwargs):
        import torch

        with torch.inference_mode():
            output = self.network(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                  past_key_values=cache, use_cache=True, **kwargs)
        return output.logits[:, -1].float()

    def join(self, rows: list[Row]) -> None:
        import torch
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        tokenizer = self.generator.tokenizer
        # A row another engine began continues from its prompt and the tokens it already has.
        padded = tokenizer.pad({"input_ids": [row.request.prompt_ids + row.tokens for row in rows]},
                               return_tensors="pt").to(self.network.device)
        mask = padded["attention_mask"]
        cache = DynamicCache(config=self.network.config)
        logits = self._forward(padded["input_ids"], mask, (mask.cumsum(-1) - 1).clamp(min=0), cache, logits_to_keep=1)
        last = choose_tokens(logits, [row.request for row in rows])
        # Joining pads the caches to one length: only plain layers (no sliding window) can be padded.
        self.can_join = all(type(layer) is DynamicLayer for layer in cache.layers)
        if self.cache is None:
            self.cache, self.mask, self.last, self.rows = cache, mask, last, rows
        else:
            length = max(self.mask.shape[1], mask.shape[1])
            for mine, theirs in zip(self.cache.layers, cache.layers):
                mine.keys = torch.cat([_pad_left(mine.keys, length, -2), _pad_left(theirs.keys, length, -2)])
                mine.values = torch.cat([_pad_left(mine.values, length, -2), _pad_left(theirs.values, length, -2)])
            self.mask = torch.cat([_pad_left(self.mask, length, -1), _pad_left(mask, length, -1)])
            self.last = torch.cat([self.last, last])
            self.rows = [*self.rows, *rows]
        for row, token in zip(rows, last[:, 0].tolist()):
            row.add(token)
        self._drop_finished()

    def step(self) -> None:
        import torch

        if not self.rows:
            return
        if self.generator.metrics is not None:
            self.generator.metrics.batch_size.observe(len(self.rows))
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        positions = self.mask.sum(-1, keepdim=True) - 1
        logits = self._forward(self.last, self.mask, positions, self.cache)
        self.last = choose_tokens(logits, [row.request for row in self.rows])
        for row, token in zip(self.rows, self.last[:, 0].tolist()):
            row.add(token)
        self._drop_finished()

    def _drop_finished(self) -> None:
        import torch

        keep = [index for index, row in enumerate(self.rows) if not row.done]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[index] for index in keep]
        if not keep:
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.mask, self.last = self.mask[index], self.last[index]
        # Columns that are padding in every remaining row are dropped: attention no longer pays for them.
        start = int((self.mask.sum(0) > 0).nonzero()[0])
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]


def _pad_left(tensor, length: int, dim: int):
    import torch.nn.functional as F

    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    # F.pad takes (left, right) pairs from the last dimension backwards.
    pad = [0, 0] * (-dim - 1) + [missing, 0]
    return F.pad(tensor, pad)


def choose_tokens(logits, requests: list[GenerationRequest]):
    """[rows, 1] next tokens: argmax for temperature 0, else temperature and top-p sampling per row."""
    import torch

    tokens = logits.argmax(-1)
    for row, request in enumerate(requests):
        if request.temperature > 0:
            probabilities = (logits[row] / request.temperature).softmax(-1)
            ordered, order = probabilities.sort(descending=True)
            outside = ordered.cumsum(-1) - ordered > request.top_p  # keeps at least the most likely token
            ordered[outside] = 0
            tokens[row] = order[torch.multinomial(ordered / ordered.sum(), 1)]
    return tokens[:, None]


