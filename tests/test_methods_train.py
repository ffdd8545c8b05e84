"""Every method on the registry trains the tiny model, saves its artifact, and reloads to the same outputs;
methods that change only some parameters leave every other one bit-identical; mergeable adapters merge
to the same outputs."""
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import domaintune
from domaintune.methods import load_kwargs
from domaintune.models.loading import is_adapter_folder, load_trained_model, merge_blocker

# method config, learning rate, required drop of the logged training loss (last / first) in 12 steps.
# The tiny model starts at ~ln(49152) = 10.8; methods that only add virtual tokens or scale
# activations move it less in 12 steps than those that add low-rank weights, hence their looser bars.
CASES = {
    "freeze": ({"name": "freeze", "top_layers": 1}, 5e-3, 0.8),
    "lora-dora": ({"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "dora": True}, 2e-2, 0.75),
    "lora-rslora": ({"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "rslora": True}, 1e-2, 0.8),
    "qlora": ({"name": "qlora", "r": 8, "alpha": 16, "dropout": 0.0}, 2e-2, 0.85),
    "ia3": ({"name": "ia3"}, 3e-1, 0.93),
    "prefix": ({"name": "prefix", "num_virtual_tokens": 8}, 1e-1, 0.95),
    "prompt-text": ({"name": "prompt", "num_virtual_tokens": 8, "init_text": "Name the city of the office."}, 1e-1, 0.97),
    "prompt-random": ({"name": "prompt", "num_virtual_tokens": 8}, 3e-1, 0.97),
    "loha": ({"name": "loha", "r": 4, "alpha": 8}, 5e-2, 0.8),
    "lokr": ({"name": "lokr", "r": 4, "alpha": 8}, 5e-2, 0.85),
    "adapters": ({"name": "adapters", "style": "houlsby", "reduction_factor": 8}, 5e-2, 0.9),
}


class KeepModel(TrainerCallback):
    """Holds on to the trained model and the first training batch."""

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.collator = train_dataloader.collate_fn

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.model = model


def train_losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in run.metrics.read_text().splitlines() if '"loss"' in line]


def logits(model, input_ids):
    model.eval()
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits
    return out[:, -input_ids.shape[1] :].float()  # prompt tuning's training model also returns its virtual tokens


def base_parameters(model) -> dict[str, torch.nn.Parameter]:
    """Parameters of the underlying transformers model, under their original names."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {name.replace(".base_layer", ""): param for name, param in inner.named_parameters(remove_duplicate=False)}


@pytest.fixture(scope="module")
def original_weights(tiny_model_dir):
    return load_file(str(tiny_model_dir / "model.safetensors"))


@pytest.mark.parametrize("case", list(CASES))
def test_method_trains_saves_and_reloads(case, tiny_recipe, original_weights):
    method, lr, drop = CASES[case]
    tiny_recipe["method"] = method
    tiny_recipe["training"].update(lr=lr, eval_every=12, save_every=12)
    keep = KeepModel()
    run = domaintune.train(tiny_recipe, callbacks=[keep])
    recipe = run.recipe()

    losses = train_losses(run)
    assert losses[-1] < losses[0] * drop, losses

    summary = json.loads((run.model / "training.json").read_text())
    assert summary["method"] == method["name"] and summary["global_step"] == 12
    if method["name"] != "freeze":
        assert is_adapter_folder(run.model)
        assert not (run.model / "model.safetensors").exists()  # only the adapter is saved

    # The artifact reloads to the model training ended with (4-bit base again for qlora).
    input_ids = torch.tensor([[1, 520, 2563, 314, 253, 1234, 47, 2]])
    reloaded = load_trained_model(recipe.model, run.model, merge=False, load_kwargs=load_kwargs(recipe.method))
    if method["name"] == "qlora":
        # The adapter comes back bit for bit; the outputs only closely, because bitsandbytes repacks
        # 4-bit weights for its CPU inference kernel on the first eval forward (absmax to bf16), which
        # the trained model went through at validation time.
        trained_adapter = {n: p for n, p in keep.model.named_parameters() if "lora_" in n}
        assert trained_adapter and all(torch.equal(p, dict(reloaded.named_parameters())[n]) for n, p in trained_adapter.items())
        assert torch.allclose(logits(keep.model, input_ids), logits(reloaded, input_ids), atol=0.1)
    else:
        assert torch.equal(logits(keep.model, input_ids), logits(reloaded, input_ids))

    # Only the method's parameters moved; every other weight is bit-identical to the base model's.
    trained = base_parameters(keep.model)
    changed = []
    for name, before in original_weights.items():
        param = trained[name]
        if param.shape != before.shape:  # a 4-bit packed weight (qlora): frozen by construction
            assert not param.requires_grad
            continue
        if param.requires_grad:
            changed.append(name)
        else:
            assert torch.equal(param.detach(), before), name
    if method["name"] == "freeze":
        assert changed and all(name.startswith("model.layers.1.") for name in changed)
        assert 0 < summary["parameters"]["share"] < 0.1
    else:
        assert changed == []  # adapters and prompts live outside the base weights

    # Adapters that merge give the same outputs merged into the weights (on the full-precision base).
    if is_adapter_folder(run.model) and merge_blocker(run.model) is None:
        unmerged = logits(load_trained_model(recipe.model, run.model, merge=False), input_ids)
        merged = load_trained_model(recipe.model, run.model, merge=True)
        assert not hasattr(merged, "peft_config")
        assert torch.allclose(logits(merged, input_ids), unmerged, atol=1e-4)
