"""Shared fixtures: one thread for torch, a tiny random Llama with the real SmolLM2 tokenizer."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

# Tests keep their own cache (converted bundled model, downloads, measured speeds), so they neither
# read nor pollute the user's ~/.cache/domaintune; converting the bundled model once costs ~20 s.
os.environ["DOMAINTUNE_CACHE"] = tempfile.mkdtemp(prefix="domaintune-test-cache-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _remove_test_cache():
    yield
    shutil.rmtree(os.environ["DOMAINTUNE_CACHE"], ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # On a 2-core machine another busy process makes 2 torch threads far slower than 1.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (hidden 64) saved as a Hugging Face folder with SmolLM2's tokenizer and chat template."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def build_tiny_model(folder: Path) -> Path:
    """The tiny random Llama of `tiny_model_dir`, saved in `folder` (also used by bench/ui_screenshots.py)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from domaintune.models.registry import BUNDLED

    tokenizer = AutoTokenizer.from_pretrained(str(_bundled_tokenizer_dir(BUNDLED)))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        # Wider than the default 0.02 so a few steps can move a 49k-way softmax visibly.
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _bundled_tokenizer_dir(bundled) -> Path:
    # The converted SmolLM2 folder is cached across runs; converting it once costs ~20 s.
    return bundled["smollm2-135m-instruct"].materialise()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def live_server(app, port: int):
    """The URL of `app` served by uvicorn on loopback in a thread of this process; stopped on exit."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server thread died while starting"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def qa_rows() -> list[dict]:
    """A learnable toy task: a fixed answer per capitalised city, in chat format."""
    cities = ["Paris", "Berlin", "Madrid", "Rome", "Vienna", "Lisbon", "Oslo", "Dublin", "Prague", "Warsaw"]
    rows = []
    for i in range(60):
        city = cities[i % len(cities)]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Request {i}: where is the office?"},
                    {"role": "assistant", "content": f"[{city} - LOCATION]"},
                ]
            }
        )
    return rows


@pytest.fixture
def tiny_recipe(tmp_path, tiny_model_dir, qa_rows) -> dict:
    data_file = write_jsonl(tmp_path / "train.jsonl", qa_rows)
    return {
        "name": "tiny",
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": str(tiny_model_dir)},
        "data": {"train": [str(data_file)], "max_tokens": 128},
        "method": {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "training": {
            "max_steps": 12,
            "batch_size": 4,
            "lr": 2e-2,
            "eval_every": 4,
            "save_every": 4,
            "log_every": 2,
            "threads": 1,
            "precision": "fp32",
            "warmup_ratio": 0.0,
            "early_stopping": None,
        },
        "evaluation": {"metrics": ["entity_f1", "exact_match"], "max_samples": 6, "max_new_tokens": 12},
        "export": {"dtype": "float32"},
    }


def make_trained_run(runs: Path, tiny_model_dir: Path, name: str = "arena-20260101-000000") -> Path:
    """A finished-looking run without training: the tiny model as base, a perturbed copy of it as the
    tuned full weights, prepared train and test splits of three rows, and three evaluated samples with
    base and tuned answers (what the feedback store starts from). For the workbench's arena and pages; takes a second."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    root = runs / name
    (root / "eval").mkdir(parents=True)
    (root / "data").mkdir()
    for split in ("train", "test"):  # as prepared: a test split for evaluation
        write_jsonl(root / "data" / f"{split}.jsonl", [{"messages": [{"role": "user", "content": f"Office {i}?"},
                                                                    {"role": "assistant", "content": city}]}
                                                      for i, city in enumerate(["Paris", "Rome", "Oslo"])])
    recipe = {"name": "arena", "model": {"name": str(tiny_model_dir)}, "method": {"name": "full"},
              "data": {"train": ["data/train.jsonl"]}, "inference": {"engine": "torch"},
              "evaluation": {"max_new_tokens": 12, "metrics": ["exact_match"]}}
    (root / "recipe.yaml").write_text(json.dumps(recipe), encoding="utf-8")
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    model.save_pretrained(root / "model")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(root / "model")
    (root / "model" / "training.json").write_text(json.dumps({"runtime_seconds": 1.0}), encoding="utf-8")
    write_jsonl(root / "eval" / "samples.jsonl", [{"prompt": f"question {i}", "base": f"base {i}", "tuned": f"tuned {i}",
                                                   "reference": f"answer {i}"} for i in range(3)])
    return root
