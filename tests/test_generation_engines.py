"""The generation backend: CTranslate2 answers as torch does at float32, converts once, and hands
back to torch (with a notice) where it can't load the model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from rich.console import Console
from test_inference import prompt_learning_model

from domaintune.config import ModelConfig
from domaintune.config.inference import InferenceConfig
from domaintune.core.errors import DomaintuneError
from domaintune.models import conversions, ctranslate2_library, generation
from domaintune.models.generation import CTranslate2Generator, TorchGenerator, load_generator, weights_folders
from domaintune.models.loading import load_causal_lm, load_tokenizer
from domaintune.models.registry import publish_folder

pytest.importorskip("ctranslate2")

QUESTIONS = ["What is a bond?", "Name the parties.", "Hi", "List three risks of a variable-rate loan in detail."]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    config = ModelConfig(name=str(tiny_model_dir))
    tokenizer = load_tokenizer(config)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) for q in QUESTIONS]
    return config, load_causal_lm(config), tokenizer, prompts


def engine(tiny, setting: InferenceConfig, console=None, folders=None):
    config, model, tokenizer, _ = tiny
    return load_generator(lambda: model, tokenizer, setting, folders=folders or weights_folders(config), bf16=False,
                          threads=1, exact=True, console=console)


class Recording:
    """Stands in for a CTranslate2 Generator (whose methods a test cannot replace) and records, per
    generate_batch call, each row's number of generated tokens."""

    def __init__(self, generator):
        self.generator = generator
        self.calls: list[list[int]] = []

    def generate_batch(self, prompts, **kwargs):
        results = self.generator.generate_batch(prompts, **kwargs)
        self.calls.append([len(result.sequences_ids[0]) for result in results])
        return results


def recorded(console: Console) -> str:
    return console.export_text()


def test_ctranslate2_float32_answers_as_torch_does(tiny):
    prompts = tiny[3]
    torch_engine = engine(tiny, InferenceConfig(engine="torch"))
    fast = engine(tiny, InferenceConfig(engine="ctranslate2"))
    assert isinstance(torch_engine, TorchGenerator) and isinstance(fast, CTranslate2Generator)
    assert fast.describe() == {"engine": "ctranslate2", "compute_type": "float32"}
    expected = torch_engine.generate(prompts, 12, 2)
    assert fast.generate(prompts, 12, 2) == expected
    assert fast.generate(prompts, 12, 4) == expected  # batching does not change greedy answers
    assert any(expected)


def test_answers_end_before_a_stop_string_on_both_engines(tiny):
    prompts = tiny[3]
    torch_engine = engine(tiny, InferenceConfig(engine="torch"))
    fast = engine(tiny, InferenceConfig(engine="ctranslate2"))
    full = torch_engine.generate(prompts, 16, 4)
    longest = max(full, key=len)
    stop = longest[len(longest) // 2 : len(longest) // 2 + 2]  # a string met halfway through that answer
    expected = [answer[: answer.find(stop)].strip() if stop in answer else answer for answer in full]
    assert torch_engine.generate(prompts, 16, 4, stop=[stop]) == expected
    assert fast.generate(prompts, 16, 4, stop=[stop]) == expected
    assert len(min(expected, key=len)) < len(longest)


def test_ctranslate2_ends_decoding_at_a_token_holding_the_stop_string(tiny, monkeypatch):
    """The stop saves the decoding after it, not only the text: a token holding it ends the row."""
    fast = engine(tiny, InferenceConfig(engine="ctranslate2"))
    tokenizer = fast.tokenizer
    prompt = tiny[3][3]
    answer = fast.generate([prompt], 24, 1)[0]
    stop = tokenizer.decode(tokenizer(answer, add_special_tokens=False)["input_ids"][:1]).strip()
    ends = fast._stop_token_ids((stop,))
    assert ends and all(stop in tokenizer.decode([token]) for token in ends)
    assert not any(stop in text for token, text in enumerate(tokenizer.batch_decode([[t] for t in range(len(tokenizer))]))
                   if token not in set(ends))
    recording = Recording(fast.generator)
    monkeypatch.setattr(fast, "generator", recording)
    assert fast.generate([prompt], 24, 1, stop=[stop]) == [""]
    assert recording.calls == [[1]]  # the first token held the stop string, and decoding ended there
    assert tokenizer("a\nb", add_special_tokens=False)["input_ids"][1] in fast._stop_token_ids(("\n",))


def test_a_one_token_prompt_does_not_leak_its_batch_mates_prompts(tiny):
    tokenizer = tiny[2]
    fast = engine(tiny, InferenceConfig(engine="ctranslate2"))
    prompts = ["The office is in the city of", "Hello"]
    assert [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts][1] == 1
    assert fast.generate(prompts, 6, 2) == [fast.generate([prompt], 6, 1)[0] for prompt in prompts]


def test_a_shared_prompt_prefix_is_computed_once_with_the_same_answers(tiny):
    from domaintune.models.generation import MIN_SHARED_PREFIX, shared_prefix_length

    config, model, tokenizer, _ = tiny
    examples = [turn for i in range(3) for turn in ({"role": "user", "content": f"Example {i}: who lends?"},
                                                    {"role": "assistant", "content": f"[Bank {i} - ORGANIZATION]"})]
    prompts = [tokenizer.apply_chat_template([*examples, {"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) for q in QUESTIONS]
    fast = engine(tiny, InferenceConfig(engine="ctranslate2"))
    assert shared_prefix_length([fast.tokens(p) for p in prompts]) >= MIN_SHARED_PREFIX
    assert fast.generate(prompts, 10, 4) == engine(tiny, InferenceConfig(engine="torch")).generate(prompts, 10, 4)
    assert shared_prefix_length([[1, 2, 3], [1, 2, 4]]) == 0 and shared_prefix_length([[1] * 40]) == 0
    assert shared_prefix_length([[7] * 40 + [1, 2], [7] * 40 + [3]]) == 39  # each keeps two tokens of its own


def test_long_prompts_are_decoded_a_few_rows_at_a_time_with_the_same_answers(tiny, monkeypatch):
    monkeypatch.setattr(generation, "BATCH_TOKENS", 60)
    lengths = [[0] * n for n in (10, 20, 30, 100)]
    assert generation.token_budget_batches([0, 1, 2, 3], lengths, 4) == [[0, 1], [2], [3]]
    assert generation.token_budget_batches([0, 1, 2, 3], lengths, 1) == [[0], [1], [2], [3]]

    prompts = tiny[3]
    fast = engine(tiny, InferenceConfig(engine="ctranslate2"))
    expected = fast.generate(prompts, 8, 4)
    recording = Recording(fast.generator)
    monkeypatch.setattr(fast, "generator", recording)
    longest = max(len(fast.tokens(prompt)) for prompt in prompts)
    monkeypatch.setattr(generation, "BATCH_TOKENS", 2 * longest)
    assert fast.generate(prompts, 8, 4) == expected
    batches = [len(call) for call in recording.calls]
    assert max(batches) == 2 and sum(batches) == len(prompts)
    recording.calls.clear()
    monkeypatch.setattr(generation, "BATCH_TOKENS", 1)  # every prompt over the budget: one at a time
    assert fast.generate(prompts, 8, 4) == expected and [len(call) for call in recording.calls] == [1] * len(prompts)


def test_conversion_is_cached_per_weights_and_compute_type(tiny, monkeypatch):
    first = engine(tiny, InferenceConfig(engine="ctranslate2"))
    calls = []
    ctranslate2 = ctranslate2_library.ctranslate2()
    original = ctranslate2.converters.TransformersConverter.convert

    def counting(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ctranslate2.converters.TransformersConverter, "convert", counting)
    again = engine(tiny, InferenceConfig(engine="ctranslate2"))
    assert again.model_dir == first.model_dir and calls == []
    int8 = engine(tiny, InferenceConfig(engine="ctranslate2", compute_type="int8"))
    assert int8.model_dir != first.model_dir and len(calls) == 1 and int8.compute_type == "int8"


def test_the_conversion_cache_evicts_the_least_recently_used_beyond_its_budget(tmp_path, monkeypatch):
    now = 1_000_000.0
    for name, size, used_hours_ago in (("old", 300, 50), ("older", 300, 90), ("recent", 300, 0.5), ("new", 300, 2)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.bin").write_bytes(b"x" * size)
        os.utime(tmp_path / name, (now - used_hours_ago * 3600,) * 2)
    (tmp_path / ".converting-abc").mkdir()  # a conversion in progress is not the cache's to evict
    evicted = conversions.evict_conversions(tmp_path, budget=700, now=now)
    assert [path.name for path in evicted] == ["older", "old"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [".converting-abc", "new", "recent"]
    # One used within the hour is kept even over budget: another process may be about to load it.
    assert conversions.evict_conversions(tmp_path, budget=0, now=now) == [tmp_path / "new"]
    monkeypatch.setenv("DOMAINTUNE_CONVERSIONS_GB", "lots")
    with pytest.raises(DomaintuneError, match="DOMAINTUNE_CONVERSIONS_GB='lots'"):
        conversions.conversions_budget()


def test_a_conversion_a_running_server_holds_is_not_evicted(tmp_path):
    import subprocess
    import sys

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for name in ("served", "abandoned"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.bin").write_bytes(b"x" * 100)
    conversions.hold_conversion(tmp_path / "served")  # by this process, alive
    (tmp_path / "abandoned" / f"{conversions.LEASE_PREFIX}{ended.stdout.strip()}").touch()  # by an ended one
    for name in ("served", "abandoned"):
        os.utime(tmp_path / name, (0, 0))  # last used long ago
    assert conversions.evict_conversions(tmp_path, budget=0, now=10**9) == [tmp_path / "abandoned"]
    assert (tmp_path / "served" / "model.bin").exists()


def test_a_model_folder_is_published_whole_and_one_already_complete_stays(tmp_path):
    def written(name: str, *files: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for file in files:
            (folder / file).write_text(name)
        return folder

    target = tmp_path / "model"
    publish_folder(written("first", "model.bin"), target, "model.bin")
    assert (target / "model.bin").read_text() == "first"
    # Another process finished first: its folder, perhaps loaded right now, is not replaced.
    second = written("second", "model.bin")
    publish_folder(second, target, "model.bin")
    assert (target / "model.bin").read_text() == "first" and second.exists()
    # A folder without its marker was left half-written (an older version wrote in place): replaced.
    (target / "model.bin").unlink()
    (target / "part").write_text("half")
    publish_folder(written("third", "model.bin"), target, "model.bin")
    assert sorted(path.name for path in target.iterdir()) == ["model.bin"]


def test_a_failed_conversion_of_the_bundled_gguf_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    import transformers

    from domaintune.models import registry

    class FailingSave:
        config = object()

        def save_pretrained(self, folder):
            (Path(folder) / "model.safetensors").write_bytes(b"half")
            raise OSError("No space left on device")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *args, **kwargs: object())
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *args, **kwargs: FailingSave())
    with pytest.raises(OSError, match="No space"):
        registry.convert_gguf_to_safetensors(tmp_path, "model.gguf", tmp_path / "cache" / "smollm2")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_cache_hit_marks_the_conversion_as_just_used(tiny):
    first = engine(tiny, InferenceConfig(engine="ctranslate2"))
    os.utime(first.model_dir, (0, 0))
    engine(tiny, InferenceConfig(engine="ctranslate2"))
    assert first.model_dir.stat().st_mtime > 0


def test_an_adapter_run_is_merged_then_converted(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    config, model, tokenizer, prompts = tiny
    import copy

    import torch

    torch.manual_seed(1)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                 init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    merged = peft_model.merge_and_unload()
    folders = weights_folders(config, adapter)
    assert folders == [Path(config.name), adapter]
    fast = load_generator(lambda: merged, tokenizer, InferenceConfig(), folders=folders, bf16=False, threads=1, exact=True)
    assert isinstance(fast, CTranslate2Generator)
    assert fast.generate(prompts, 10, 4) == TorchGenerator(merged, tokenizer, False).generate(prompts, 10, 4)


def test_a_model_the_engine_cannot_load_falls_back_to_torch_with_a_notice(tiny, monkeypatch):
    ctranslate2 = ctranslate2_library.ctranslate2()

    def unsupported(self, *args, **kwargs):
        raise ValueError("No conversion is registered for the model configuration TinyConfig")

    monkeypatch.setattr(ctranslate2.converters.TransformersConverter, "convert", unsupported)
    console = Console(record=True, width=200)
    chosen = engine(tiny, InferenceConfig(engine="auto", compute_type="int8_float32"), console)  # not cached yet
    assert isinstance(chosen, TorchGenerator)
    notice = [line for line in recorded(console).splitlines() if "Generating with torch" in line]
    assert len(notice) == 1 and "No conversion is registered" in notice[0]


def test_unmergeable_adapters_stay_on_torch(tiny, tmp_path):
    from peft import PromptTuningConfig, get_peft_model

    config, model, tokenizer, _ = tiny
    import copy

    prompt_tuned = get_peft_model(copy.deepcopy(model), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    adapter = tmp_path / "prompt"
    prompt_tuned.save_pretrained(adapter)
    console = Console(record=True, width=200)
    chosen = load_generator(lambda: prompt_tuned, tokenizer, InferenceConfig(), folders=weights_folders(config, adapter),
                            bf16=False, threads=1, exact=True, console=console)
    assert isinstance(chosen, TorchGenerator)
    assert "virtual tokens" in recorded(console)


def test_auto_compute_type_is_exact_for_evaluation_and_fast_elsewhere(monkeypatch):
    monkeypatch.setattr(generation, "cpu_flags", lambda: frozenset({"avx512f", "avx512_vnni"}))
    monkeypatch.setattr(generation, "cpu_has_bf16", lambda: False)
    assert generation.compute_type_for(InferenceConfig(), exact=True) == "float32"
    # int8 beats float32 on MKL's kernels, not on oneDNN's (the default GEMM): float32 unless MKL is on.
    monkeypatch.setenv("CT2_USE_MKL", "0")
    assert generation.compute_type_for(InferenceConfig(), exact=False) == "float32"
    monkeypatch.setenv("CT2_USE_MKL", "1")
    assert generation.compute_type_for(InferenceConfig(), exact=False) == "int8"
    assert generation.compute_type_for(InferenceConfig(compute_type="int8_float32"), exact=True) == "int8_float32"
    monkeypatch.setattr(generation, "cpu_flags", lambda: frozenset({"avx2"}))
    assert generation.compute_type_for(InferenceConfig(), exact=False) == "float32"


def test_torch_engine_when_asked(tiny):
    assert isinstance(engine(tiny, InferenceConfig(engine="torch")), TorchGenerator)


def test_auto_generates_with_torch_on_the_gpu_where_there_is_one(tiny, monkeypatch):
    """Any CUDA device outruns the CPU engines: there `auto` is torch, with the model moved to the GPU;
    CTranslate2 (on the CPU) only when named."""
    placed = []
    monkeypatch.setattr(generation, "inference_device", lambda: "cuda")
    monkeypatch.setattr(generation, "on_inference_device", lambda model: placed.append(model) or model)
    assert isinstance(engine(tiny, InferenceConfig()), TorchGenerator) and placed == [tiny[1]]
    assert isinstance(engine(tiny, InferenceConfig(engine="ctranslate2")), CTranslate2Generator)


def test_streamed_text_joins_to_the_generated_answer_on_both_engines(tiny):
    """The workbench's arena streams answers; the pieces must add up to what `generate` answers."""
    prompts = tiny[3]
    for setting in (InferenceConfig(engine="torch"), InferenceConfig(engine="ctranslate2")):
        generator = engine(tiny, setting)
        for prompt in prompts[:2]:
            pieces = list(generator.stream(prompt, 12))
            assert len(pieces) > 1 and "".join(pieces).strip() == generator.generate([prompt], 12, 1)[0], setting
    # A reader that stops early stops the torch generation (its thread ends, nothing left running).
    stream = engine(tiny, InferenceConfig(engine="torch")).stream(prompts[0], 200)
    next(stream)
    stream.close()


def test_ctranslate2_is_imported_with_its_own_openmp_runtime():
    """Imported after torch (as everywhere in domaintune), ctranslate2 is loaded with RTLD_DEEPBIND, so its
    OpenMP calls go to the runtime it ships and not torch's (which halved its speed once torch had run),
    and the process's dlopen flags are restored. A fresh interpreter: this one has ctranslate2 loaded."""
    probe = (
        "import os, sys, torch\n"
        "torch.randn(64, 64) @ torch.randn(64, 64)\n"
        "flags, seen = sys.getdlopenflags(), []\n"
        "setter = sys.setdlopenflags\n"
        "sys.setdlopenflags = lambda value: (seen.append(value), setter(value))\n"
        "from domaintune.models.ctranslate2_library import ctranslate2\n"
        "library = ctranslate2()\n"
        "assert library.get_supported_compute_types('cpu')\n"
        "print(bool(seen[0] & os.RTLD_DEEPBIND), sys.getdlopenflags() == flags)\n"
    )
    assert probe_output(probe) == ["True", "True"]


def test_ctranslate2_uses_onednn_unless_the_user_asks_for_mkl():
    """MKL's float32 ran 2.4x slower than oneDNN's on an Intel Xeon (bench/README): CT2_USE_MKL defaults
    to 0 before the library reads it, and a value the user set is kept. Fresh interpreters, as above."""
    import os

    probe = ("import os\nfrom domaintune.models.ctranslate2_library import ctranslate2, mkl_enabled\n"
             "ctranslate2()\nprint(os.environ['CT2_USE_MKL'], mkl_enabled())\n")
    environment = {key: value for key, value in os.environ.items() if key != "CT2_USE_MKL"}
    assert probe_output(probe, environment) == ["0", "False"]
    assert probe_output(probe, {**environment, "CT2_USE_MKL": "1"}) == ["1", "True"]


def probe_output(probe: str, environment: dict[str, str] | None = None) -> list[str]:
    """The words a fresh interpreter prints running `probe` (this one has ctranslate2 loaded already)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          env=environment).stdout.split()


def test_a_failed_conversion_names_what_failed_and_why(tmp_path):
    from domaintune.core.errors import DomaintuneError
    from domaintune.models.generation import EngineUnavailable, converted_for_engine

    def convert(write_merged):
        raise DomaintuneError("OpenVINO engine: converting /m to q8_0 failed:\nTraceback (most recent call last):\n"
                              "NotImplementedError: Architecture 'FancyLM' not supported!")

    with pytest.raises(EngineUnavailable) as caught:
        converted_for_engine(convert, lambda: None, None, [tmp_path])
    assert str(caught.value) == ("OpenVINO engine: converting /m to q8_0 failed: "
                                 "NotImplementedError: Architecture 'FancyLM' not supported!")


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_a_prompt_learning_models_batched_answers_equal_its_one_at_a_time_answers(tiny, tiny_model_dir, tmp_path, method):
    _, _, tokenizer, prompts = tiny
    generator = TorchGenerator(prompt_learning_model(tiny_model_dir, tmp_path, method), tokenizer, bf16=False)
    batched = generator.generate(prompts, max_new_tokens=8, batch_size=len(prompts))
    assert batched == [generator.generate([prompt], max_new_tokens=8, batch_size=1)[0] for prompt in prompts]
