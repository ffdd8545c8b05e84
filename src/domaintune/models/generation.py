"""One generation backend behind everything that makes a model write text: evaluation, the judge,
`select`, synthesis and paraphrase, the feedback page and `serve`.

Engines, chosen by the recipe's `inference` section:
- `torch`: transformers' `generate` on the loaded model (inference.generate). Exact, and the only engine
  for adapters that can't be merged into the weights (prefix and prompt tuning, bottleneck adapters).
- `ctranslate2`: the merged model converted once per (weights, compute type) into the cache and run by
  CTranslate2's C++ generator. On the 2-core CPUs measured (README, "Generation engines") it decodes
  3-5x faster than `generate` at float32 with the same greedy answers, more with int8.
`auto` is torch on the GPU where there is one; on a CPU, CTranslate2 where it is installed and converts the
model, else torch with a one-line notice.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from rich.console import Console

from domaintune.config import ModelConfig
from domaintune.config.inference import InferenceConfig
from domaintune.config.runtime import cpu_flags, cpu_has_bf16, inference_device
from domaintune.models.conversions import converted_model
from domaintune.models.ctranslate2_library import ctranslate2, mkl_enabled
from domaintune.models.inference import device_named, stream_token_ids, until_stop
from domaintune.models.inference import generate as torch_generate
from domaintune.models.loading import (
    is_adapter_folder,
    load_causal_lm,
    load_tokenizer,
    load_trained_model,
    merge_blocker,
    on_inference_device,
)
from domaintune.models.registry import resolve_model_path

# CPU features under which CTranslate2's int8 kernels on Intel MKL beat float32 (VNNI dot products, AVX-512).
# On oneDNN, the default GEMM (models/ctranslate2_library.py), int8 was the slower type on a Xeon with VNNI
# and AMX: 18.5 tok/s at batch 1 against float32's 35.5.
INT8_FLAGS = {"avx512_vnni", "avx_vnni", "avx512f"}
# Rows × prompt tokens CTranslate2 decodes together. On a 2-core CPU long prompts gain nothing from
# batching, and a prompt prefix shared by every row (k-shot examples) is reused only row by row: eight
# four-shot prompts of ~1,800 tokens took 122 s at batch 8 and 37 s one at a time, while 83-token prompts
# took 25 s at batch 8 and 49 s one at a time (bench/README, "Generation engines").
BATCH_TOKENS = 2048


@dataclass
class TorchGenerator:
    """transformers' `generate` on a loaded model."""

    model: object
    tokenizer: object
    bf16: bool
    engine: str = "torch"

    @property
    def compute_type(self) -> str:
        return "bfloat16" if self.bf16 else "float32"

    def seed(self, value: int) -> None:
        import torch

        torch.manual_seed(value)

    def generate(self, prompts: list[str], max_new_tokens: int, batch_size: int,
                 temperature: float | None = None, stop: Sequence[str] = ()) -> list[str]:
        return torch_generate(self.model, self.tokenizer, prompts, max_new_tokens, batch_size, self.bf16, temperature,
                              stop)

    def stream(self, prompt: str, max_new_tokens: int, temperature: float | None = None) -> Iterator[str]:
        """One completion's text in pieces as it is generated; joined and stripped, what `generate` returns."""
        ids = stream_token_ids(self.model, self.tokenizer, prompt, max_new_tokens, self.bf16, temperature)
        try:
            yield from decoded_pieces(ids, self.tokenizer)
        finally:
            ids.close()  # a reader that stopped early stops the generation too

    def describe(self) -> dict:
        return {"engine": self.engine, "compute_type": self.compute_type, **device_named(self.model)}


class CTranslate2Generator:
    """A converted model on CTranslate2; prompts are rendered text, tokenised by the model's tokenizer."""

    engine = "ctranslate2"

    def __init__(self, model_dir: Path, tokenizer, compute_type: str, threads: int, end_ids: list[int] | None = None):
        self.generator = ctranslate2().Generator(str(model_dir), device="cpu", compute_type=compute_type,
                                                 intra_threads=threads)
        self.tokenizer = tokenizer
        self.compute_type = compute_type
        self.model_dir = model_dir
        self.threads = threads
        # The tokenizer's end token, as torch's generate is given (the converted config may list others);
        # the server passes the generation config's end tokens as its torch engine uses them.
        self.end_ids = end_ids or [tokenizer.eos_token_id]
        self._stop_ids: dict[tuple[str, ...], list[int]] = {}

    def seed(self, value: int) -> None:
        ctranslate2().set_random_seed(value)

    def tokens(self, prompt: str) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def options(self, max_new_tokens: int, temperature: float | None, top_p: float = 1.0) -> dict:
        sampling = ({"sampling_topk": 1} if temperature is None
                    else {"sampling_topk": 0, "sampling_temperature": temperature, "sampling_topp": top_p})
        return {"max_length": max_new_tokens, "end_token": self.end_ids, **sampling}

    def generate(self, prompts: list[str], max_new_tokens: int, batch_size: int,
                 temperature: float | None = None, stop: Sequence[str] = ()) -> list[str]:
        """Completions for rendered prompts, each ending before the first of `stop` it reaches. A row's
        decoding ends at a token whose text holds a stop string (a line break is never split over tokens);
        a stop string that is split over tokens is cut from the text afterwards."""
        if not prompts:
            return []
        tokens = [self.tokens(prompt) for prompt in prompts]
        outputs = [""] * len(prompts)
        options = self.options(max_new_tokens, temperature)
        if stop:
            # Not a per-token callback: CTranslate2 4.8.5 aborted the process now and then after one that
            # ended rows (SIGABRT in its worker thread, on a busy machine). The end token is kept so the text
            # a token holds before its stop string is not lost.
            options.update(end_token=self.end_ids + self._stop_token_ids(tuple(stop)), return_end_token=True)
        for group in one_token_prompts_apart(tokens):
            # Similar lengths batch together, as with torch; CTranslate2 pads each batch itself.
            order = sorted(group, key=lambda i: len(tokens[i]))
            shared = shared_prefix_length([tokens[i] for i in order])
            for batch in token_budget_batches(order, tokens, batch_size):
                results = self.generator.generate_batch(
                    [tokens[i][shared:] for i in batch], max_batch_size=len(batch), include_prompt_in_result=False,
                    **({"static_prompt": tokens[order[0]][:shared]} if shared else {}),
                    **options,
                )
                for i, result in zip(batch, results):
                    text = self.tokenizer.decode(result.sequences_ids[0], skip_special_tokens=True)
                    outputs[i] = until_stop(text, stop).strip()
        return outputs

    def _stop_token_ids(self, stop: tuple[str, ...]) -> list[int]:
        """The vocabulary's tokens whose text holds one of `stop` (decoded once per stop set)."""
        if stop not in self._stop_ids:
            texts = self.tokenizer.batch_decode([[token] for token in range(len(self.tokenizer))])
            self._stop_ids[stop] = [token for token, text in enumerate(texts) if any(end in text for end in stop)]
        return self._stop_ids[stop]

    def stream(self, prompt: str, max_new_tokens: int, temperature: float | None = None) -> Iterator[str]:
        """One completion's text in pieces as it is generated; joined and stripped, what `generate` returns."""
        steps = self.generator.generate_tokens(self.tokens(prompt), **self.options(max_new_tokens, temperature))
        yield from decoded_pieces((step.token_id for step in steps), self.tokenizer)

    def describe(self) -> dict:
        return {"engine": self.engine, "compute_type": self.compute_type}


TextGenerator = TorchGenerator | CTranslate2Generator


def decoded_pieces(token_ids: Iterable[int], tokenizer) -> Iterator[str]:
    """The text of a growing list of tokens, as the new part each time it decodes to whole characters (a
    character split over tokens waits for its last one); leading whitespace is dropped, as `generate` strips."""
    ids: list[int] = []
    shown = ""
    for token in token_ids:
        ids.append(token)
        text = tokenizer.decode(ids, skip_special_tokens=True).lstrip()
        if text.endswith("\ufffd") or len(text) <= len(shown):
            continue
        yield text[len(shown):]
        shown = text


# Below this many shared tokens, computing the prefix once saves less than it costs.
MIN_SHARED_PREFIX = 32


def shared_prefix_length(prompts: list[list]) -> int:
    """How many leading tokens every prompt shares (a k-shot prompt's examples, a system prompt), for
    CTranslate2 to compute once and cache; 0 when not worth it. Each prompt keeps at least two tokens
    of its own, as the one-token rule below needs."""
    if len(prompts) < 2:
        return 0
    shortest = min(len(prompt) for prompt in prompts)
    shared = 0
    while shared < shortest and all(prompt[shared] == prompts[0][shared] for prompt in prompts):
        shared += 1
    shared = min(shared, shortest - 2)
    return shared if shared >= MIN_SHARED_PREFIX else 0


def token_budget_batches(order: list[int], tokens: list[list], batch_size: int) -> list[list[int]]:
    """`order` (prompt indices, shortest first) cut into batches of at most `batch_size` rows and
    BATCH_TOKENS rows × longest prompt; a prompt over the budget alone goes in a batch of its own."""
    batches: list[list[int]] = []
    for index in order:  # shortest first: each prompt is the longest of its batch so far
        if batches and len(batches[-1]) < batch_size and (len(batches[-1]) + 1) * len(tokens[index]) <= BATCH_TOKENS:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def one_token_prompts_apart(tokens: list[list]) -> list[list[int]]:
    """Indices of the prompts in groups CTranslate2 may decode together: in a batch whose shortest prompt
    is one token, it hands back the other prompts' tails as if generated (measured with 4.8.5), so a
    one-token prompt goes alone."""
    single = [i for i, prompt in enumerate(tokens) if len(prompt) <= 1]
    rest = [i for i, prompt in enumerate(tokens) if len(prompt) > 1]
    return [[i] for i in single] + ([rest] if rest else [])


def ctranslate2_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ctranslate2") is not None


def compute_type_for(setting: InferenceConfig, exact: bool) -> str:
    """The CTranslate2 compute type: the recipe's, or under `auto` float32 where answers must not move
    with the engine (`exact`: evaluation), else the fastest this CPU runs well."""
    supported = ctranslate2().get_supported_compute_types("cpu")
    if setting.compute_type != "auto":
        return setting.compute_type
    if exact:
        return "float32"
    flags = cpu_flags()
    if cpu_has_bf16() and "bfloat16" in supported:
        return "bfloat16"
    if flags & INT8_FLAGS and mkl_enabled() and "int8" in supported:
        return "int8"
    return "float32"


def weights_folders(config: ModelConfig, model_dir: Path | None = None) -> list[Path | str]:
    """What makes a model's weights: the base folder (or `hub-id@revision`), then a run's adapter folder;
    a run's full weights alone."""
    if model_dir is not None and not is_adapter_folder(model_dir):
        return [Path(model_dir)]
    base = Path(resolve_model_path(config.name))
    folders: list[Path | str] = [base if base.is_dir() else f"{config.name}@{config.revision or 'main'}"]
    return folders + ([Path(model_dir)] if model_dir is not None else [])


def is_plain_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists() and any(path.glob("*.safetensors"))


class EngineUnavailable(Exception):
    """An engine (CTranslate2, OpenVINO) can't run this model; the message says why."""


def ctranslate2_folder(load_model: Callable[[], object], tokenizer, setting: InferenceConfig, *,
                       folders: list[Path | str], exact: bool, console: Console | None = None) -> tuple[Path, str]:
    """(the converted model's folder, its compute type), converting once; EngineUnavailable where
    CTranslate2 can't take the model. `load_model()` is called only to save a merged adapter."""
    if not ctranslate2_installed():
        raise EngineUnavailable("ctranslate2 is not installed")
    compute_type = compute_type_for(setting, exact)
    return converted_for_engine(lambda write_merged: converted_model(folders, compute_type, write_merged, console),
                                load_model, tokenizer, folders), compute_type


def converted_for_engine(convert: Callable[[Callable[[Path], None] | None], Path], load_model: Callable[[], object],
                         tokenizer, folders: list[Path | str]) -> Path:
    """What `convert(write_merged)` gives for the model `folders` make: `write_merged(folder)` saves the merged model
    where the folders are not one plain model folder (`load_model()` is called only then). EngineUnavailable, with
    the reason, where an adapter can't be merged or the conversion fails."""
    reason = next((reason for folder in folders[1:] if (reason := merge_blocker(folder))), None)
    if reason is not None:
        raise EngineUnavailable(reason)
    plain = len(folders) == 1 and isinstance(folders[0], Path) and is_plain_model_folder(folders[0])
    try:
        return convert(None if plain else _merged_writer(load_model, tokenizer))
    except Exception as error:  # converters raise bare errors for architectures they do not know
        lines = str(error).strip().splitlines()
        # A converter run in a subprocess says what failed first and why last (models/gguf_converter.py).
        reason = " ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else type(error).__name__
        raise EngineUnavailable(reason) from None


def torch_notice(console: Console | None, error: EngineUnavailable, engine: str = "CTranslate2") -> None:
    if console is not None:
        console.print(f"[yellow]Generating with torch: {engine} can't load this model ({error}).[/yellow]")


def load_generator(load_model: Callable[[], object], tokenizer, setting: InferenceConfig, *,
                   folders: list[Path | str], bf16: bool, exact: bool, threads: int | None = None,
                   console: Console | None = None) -> TextGenerator:
    """The engine that will write this model's text: `setting.engine`, where `auto` is torch on a GPU and
    CTranslate2 on a CPU (torch where CTranslate2 can't load the model).

    `load_model()` gives the torch model (called only when needed: the torch engine, or saving a merged
    adapter for its one conversion); `folders` are where its weights come from (weights_folders).
    `exact` asks for answers that match torch's (evaluation); otherwise the compute type may trade
    exactness for speed. `threads` defaults to torch's setting (configure_threads decides it).
    """
    import torch

    model = _once(load_model)
    # On a GPU torch outruns every CPU engine; CTranslate2 runs there only when asked for by name.
    if setting.engine == "torch" or (setting.engine == "auto" and (inference_device() == "cuda"
                                                                   or not ctranslate2_installed())):
        return TorchGenerator(on_inference_device(model()), tokenizer, bf16)
    try:
        model_dir, compute_type = ctranslate2_folder(model, tokenizer, setting, folders=folders, exact=exact,
                                                     console=console)
    except EngineUnavailable as error:
        torch_notice(console, error)
        return TorchGenerator(on_inference_device(model()), tokenizer, bf16)
    return CTranslate2Generator(model_dir, tokenizer, compute_type, threads or torch.get_num_threads())


def model_loader(config: ModelConfig, model_dir: Path | None = None) -> Callable[[], object]:
    """How to load the base model, or a run's tuned `model_dir` (adapters merged), when it is needed."""
    if model_dir is None:
        return lambda: load_causal_lm(config)
    return lambda: load_trained_model(config, model_dir)


def open_generator(config: ModelConfig, setting: InferenceConfig, *, model_dir: Path | None = None, bf16: bool = False,
                   exact: bool, threads: int | None = None, console: Console | None = None) -> TextGenerator:
    """A model's engine from its recipe section: the base model, or a run's tuned `model_dir`."""
    # A run's model folder has its tokenizer; a bare adapter folder uses the base model's.
    own = model_dir is not None and (Path(model_dir) / "tokenizer_config.json").exists()
    tokenizer = load_tokenizer(config, path=str(model_dir) if own else None)
    return load_generator(model_loader(config, model_dir), tokenizer, setting, folders=weights_folders(config, model_dir),
                          bf16=bf16, exact=exact, threads=threads, console=console)


def _once(load: Callable[[], object]) -> Callable[[], object]:
    loaded: list = []

    def model():
        if not loaded:
            loaded.append(load())
        return loaded[0]

    return model


def _merged_writer(model: Callable[[], object], tokenizer) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        model().save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    return write
