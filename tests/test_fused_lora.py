"""The fused LoRA forward gives peft's numbers, and steps aside wherever it does not apply."""
import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from transformers import AutoModelForCausalLM

from domaintune.training import fused_lora
from domaintune.training.fused_lora import fuse_lora_layers, unfuse_lora_layers


def lora_model(model_dir, **options):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", **options))
    for module in model.modules():
        if isinstance(module, LoraLinear):
            # peft starts lora_B at zero (the update is the identity); the test needs both paths live.
            for weight in (*module.lora_A.values(), *module.lora_B.values()):
                torch.nn.init.normal_(weight.weight, std=0.2)
    return model


def loss_and_gradients(model, input_ids, seed=0):
    model.zero_grad()
    torch.manual_seed(seed)  # the same dropout masks on both sides
    loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), gradients


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fused_layers_give_peft_loss_and_gradients(tiny_model_dir, dropout):
    model = lora_model(tiny_model_dir, lora_dropout=dropout)
    model.train()
    input_ids = torch.randint(0, 1000, (2, 12))
    expected_loss, expected = loss_and_gradients(model, input_ids)

    assert fuse_lora_layers(model) == 14  # 7 linear layers in each of the 2 blocks
    loss, gradients = loss_and_gradients(model, input_ids)
    assert torch.allclose(loss, expected_loss, atol=1e-6)
    assert gradients.keys() == expected.keys() and len(gradients) == 28
    for name, gradient in gradients.items():
        assert torch.allclose(gradient, expected[name], atol=1e-5, rtol=1e-4), name


@pytest.fixture
def fused_calls(monkeypatch) -> list:
    calls, apply = [], fused_lora.LoraLinearFunction.apply
    monkeypatch.setattr(fused_lora.LoraLinearFunction, "apply", lambda *args: calls.append(1) or apply(*args))
    return calls


def test_fused_layers_keep_a_bias_and_leave_dora_to_peft(tiny_model_dir, fused_calls):
    model = lora_model(tiny_model_dir, use_dora=True)
    layer = next(module for module in model.modules() if isinstance(module, LoraLinear))
    layer.base_layer.bias = torch.nn.Parameter(torch.randn(layer.base_layer.out_features), requires_grad=False)
    input_ids = torch.randint(0, 1000, (1, 9))
    expected_loss, _ = loss_and_gradients(model, input_ids)
    assert fuse_lora_layers(model) == 0
    loss, _ = loss_and_gradients(model, input_ids)
    assert fused_calls == [] and torch.allclose(loss, expected_loss, atol=1e-6)  # DoRA: peft's forward every time

    plain = lora_model(tiny_model_dir)
    layer = next(module for module in plain.modules() if isinstance(module, LoraLinear))
    layer.base_layer.bias = torch.nn.Parameter(torch.randn(layer.base_layer.out_features), requires_grad=False)
    reference = copy.deepcopy(plain)
    fuse_lora_layers(plain)
    expected_loss = loss_and_gradients(reference, input_ids)[0]
    assert torch.allclose(loss_and_gradients(plain, input_ids)[0], expected_loss, atol=1e-6)
    assert len(fused_calls) == 14


def test_merged_disabled_and_autocast_calls_fall_back_to_peft(tiny_model_dir, fused_calls):
    model = lora_model(tiny_model_dir)
    fuse_lora_layers(model)
    model.eval()
    input_ids = torch.randint(0, 1000, (1, 7))
    with torch.no_grad():
        adapted = model(input_ids=input_ids).logits
        assert len(fused_calls) == 14
        with model.disable_adapter():
            base = model(input_ids=input_ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(input_ids=input_ids).logits
        model.merge_adapter()
        merged = model(input_ids=input_ids).logits
    assert len(fused_calls) == 14  # none after the first forward
    assert not torch.allclose(adapted, base, atol=1e-3)  # the adapter is live, and disabling it is honoured
    assert torch.allclose(merged, adapted, atol=1e-4)
    assert torch.allclose(autocast.float(), adapted, atol=0.5)  # bf16 under autocast: peft's path, same answer roughly

    model.unmerge_adapter()
    unfuse_lora_layers(model)
    with torch.no_grad():
        model(input_ids=input_ids)
    assert len(fused_calls) == 14  # peft's own forward again


def test_runs_fuse_plain_lora_in_fp32_only(tiny_recipe):
    from domaintune.config import Recipe
    from domaintune.training.forecast import fuses_lora, setup_key

    def recipe(**changes) -> Recipe:
        raw = {**tiny_recipe, "method": {"name": "lora", **changes.pop("method", {})}}
        raw["training"] = {**raw.get("training", {}), **changes}
        return Recipe.model_validate(raw)

    assert fuses_lora(recipe(), bf16=False) and "|fused_lora" in setup_key(recipe(), 1, False)
    assert not fuses_lora(recipe(), bf16=True)
    assert not fuses_lora(recipe(compile=True), bf16=False)
    assert not fuses_lora(recipe(fused_lora=False), bf16=False)
    assert not fuses_lora(recipe(method={"dora": True}), bf16=False)
