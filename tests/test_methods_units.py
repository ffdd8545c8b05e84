"""Method registry plumbing: configs in the recipe schema, freeze selection, the packing fallback,
export of adapters that can't be merged, qlora's message without bitsandbytes, `domaintune methods`."""
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq

import domaintune
from domaintune.config import validate_recipe
from domaintune.core.errors import DomaintuneError
from domaintune.methods import METHODS, freeze, load_kwargs, supports_packing
from domaintune.training.packing import PackedCollator


def test_every_registered_method_is_a_recipe_choice():
    for name, module in METHODS.items():
        objective = getattr(module, "OBJECTIVES", ("auto",))[0]  # head exists only for classify
        assert validate_recipe({"method": {"name": name}, "objective": {"name": objective}}).method.name == name
    with pytest.raises(DomaintuneError, match="method.rank: unknown key"):
        validate_recipe({"method": {"name": "ia3", "rank": 4}})
    with pytest.raises(DomaintuneError, match="choose what to train"):
        validate_recipe({"method": {"name": "freeze", "top_layers": 0}})
    assert validate_recipe({"method": {"name": "lora", "dora": True, "rslora": True}}).method.dora


def test_freeze_selects_top_blocks_named_modules_and_patterns(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    total = sum(p.numel() for p in model.parameters())
    config = freeze.Config(top_layers=1, modules=["model.norm"], pattern=r"layers\.0\.self_attn\.q_proj")
    freeze.apply(model, config)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {"model.norm.weight", "model.layers.0.self_attn.q_proj.weight"} <= trainable
    assert all(n.startswith("model.layers.1.") for n in trainable - {"model.norm.weight", "model.layers.0.self_attn.q_proj.weight"})
    block = sum(p.numel() for p in model.model.layers[1].parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == block + 64 + 64 * 64
    assert sum(p.numel() for p in model.parameters()) == total
    with pytest.raises(DomaintuneError, match="no module 'model.nope'"):
        freeze.apply(model, freeze.Config(top_layers=0, modules=["model.nope"]))
    with pytest.raises(DomaintuneError, match="more than the model's 2 blocks"):
        freeze.apply(model, freeze.Config(top_layers=3))


def test_virtual_token_methods_fall_back_to_padded_batches(tiny_recipe):
    from test_methods_train import KeepModel

    assert not supports_packing(METHODS["prefix"].Config()) and not supports_packing(METHODS["prompt"].Config())
    assert supports_packing(METHODS["lora"].Config()) and supports_packing(METHODS["adapters"].Config())
    for method, expected in (("prefix", DataCollatorForSeq2Seq), ("lora", PackedCollator)):
        tiny_recipe["method"] = {"name": method}
        tiny_recipe["training"].update(packing=True, max_steps=1, eval_every=1, save_every=1)
        keep = KeepModel()
        domaintune.train(tiny_recipe, callbacks=[keep])
        assert isinstance(keep.collator, expected), method


@pytest.mark.parametrize("method", [{"name": "prompt", "num_virtual_tokens": 4}, {"name": "adapters"}])
def test_export_writes_the_adapter_and_says_why_nothing_was_merged(method, tiny_recipe):
    from rich.console import Console

    tiny_recipe["method"] = method
    tiny_recipe["training"].update(max_steps=2, eval_every=2, save_every=2)
    run = domaintune.train(tiny_recipe)
    console = Console(record=True, width=200)
    written = domaintune.export_model(run.root, console=console)
    assert set(written) == {"adapter"}
    assert "No merged model written" in console.export_text()
    assert not (run.export / "merged").exists()
    files = sorted(p.name for p in (run.export / "adapter").iterdir())
    assert files == (["adapter_config.json", "adapter_model.safetensors"] if method["name"] == "prompt"
                     else ["bottleneck_adapter.json", "bottleneck_adapter.safetensors"])


def test_prompt_tuned_model_returns_one_logit_row_per_input_token(tiny_recipe):
    from domaintune.models.loading import load_trained_model

    tiny_recipe["method"] = {"name": "prompt", "num_virtual_tokens": 4}
    tiny_recipe["training"].update(max_steps=1, eval_every=1, save_every=1)
    run = domaintune.train(tiny_recipe)
    model = load_trained_model(run.recipe().model, run.model)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    assert model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.shape[1] == 5
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert out[0, :5].tolist() == ids[0].tolist() and 5 < out.shape[1] <= 8


def test_qlora_without_bitsandbytes_is_a_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import raises ImportError
    with pytest.raises(DomaintuneError, match="method qlora needs bitsandbytes"):
        load_kwargs(METHODS["qlora"].Config())


def test_methods_listing_sizes_every_method(tiny_model_dir):
    rows = {row["name"]: row for row in domaintune.api.list_methods(str(tiny_model_dir))}
    assert set(rows) == set(METHODS)
    assert rows["full"]["share"] == 1.0
    assert 0 < rows["prompt"]["share"] < rows["lora"]["share"] < rows["freeze"]["share"] < 1
    assert rows["qlora"]["trainable"] == rows["lora"]["trainable"]
    assert rows["qlora"]["memory_mb"] <= rows["lora"]["memory_mb"] < rows["full"]["memory_mb"]
    assert all(row["when"] and row["trains"] for row in rows.values())
    assert not rows["prefix"]["mergeable"] and not rows["prefix"]["packing"]


def test_every_method_has_a_valid_example_recipe():
    from pathlib import Path

    examples = Path(__file__).resolve().parent.parent / "examples"
    seen = set()
    for path in sorted([*examples.glob("method-*.yaml"), *examples.glob("classify-*.yaml")]):  # head: classify-entities-head
        recipe = domaintune.check_recipe(path)
        assert Path(recipe.data.train[0]).exists(), path
        seen.add(recipe.method.name)
    assert seen == set(METHODS)


def test_bottleneck_adapters_resume_from_a_checkpoint(tiny_recipe):
    from safetensors.torch import load_file
    from test_training import CrashAt

    from domaintune.storage.rundir import RunDir

    tiny_recipe["method"] = {"name": "adapters"}
    tiny_recipe["training"].update(max_steps=4, eval_every=2, save_every=2)
    with pytest.raises(KeyboardInterrupt):
        domaintune.train(tiny_recipe, callbacks=[CrashAt(3)])
    run = RunDir.latest(domaintune.load(tiny_recipe))
    checkpoint = load_file(str(run.last_checkpoint() / "model.safetensors"))
    assert any("bottleneck_adapter.up.weight" in name and tensor.abs().sum() > 0 for name, tensor in checkpoint.items())
    domaintune.train(tiny_recipe, resume=True)
    assert (run.model / "bottleneck_adapter.safetensors").exists()


def test_every_example_recipe_is_valid():
    from pathlib import Path

    examples = Path(__file__).resolve().parent.parent / "examples"
    for path in sorted(examples.glob("*.yaml")):
        recipe = domaintune.check_recipe(path)
        for stage in recipe.stages or []:
            assert all(Path(f).exists() for f in stage.data.get("train", [])), path


def test_qlora_where_4bit_cannot_load_is_a_message(monkeypatch, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from domaintune.config import ModelConfig
    from domaintune.models.loading import load_causal_lm

    def refuse(*args, **kwargs):
        raise RuntimeError("bitsandbytes: no supported backend for this device")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    with pytest.raises(DomaintuneError, match="(?s)in 4-bit on this machine: bitsandbytes: no supported backend.*method.name: lora"):
        load_causal_lm(ModelConfig(name=str(tiny_model_dir)), load_kwargs=load_kwargs(METHODS["qlora"].Config()))
    with pytest.raises(RuntimeError):  # without quantisation the error is not dressed up as a 4-bit problem
        load_causal_lm(ModelConfig(name=str(tiny_model_dir)))
