"""Token-weighted losses for evaluation: the supervised-positions path gives the model's own loss."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from domaintune.core.chat import IGNORE_INDEX
from domaintune.models import inference
from domaintune.models.inference import example_losses


def examples() -> list[dict]:
    torch.manual_seed(0)
    rows = []
    for length, prompt in ((40, 30), (9, 5), (25, 24), (60, 10), (12, 12)):  # the last has nothing supervised
        ids = torch.randint(5, 1000, (length,)).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return rows


def own_loss(model, example) -> tuple[float, int]:
    """The model's mean loss over the example's supervised tokens, times their count."""
    count = sum(label != IGNORE_INDEX for label in example["labels"][1:])
    if count == 0:
        return 0.0, 0
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([example["input_ids"]]), labels=torch.tensor([example["labels"]])).loss
    return float(loss) * count, count


@pytest.mark.parametrize("supervised_only", [True, False])
def test_example_losses_match_the_models_own_loss_per_row(tiny_model_dir, monkeypatch, supervised_only):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    monkeypatch.setattr(inference, "accepts_logits_to_keep", lambda model: supervised_only)
    rows = examples()
    losses = example_losses(model, tokenizer, rows, batch_size=2, bf16=False)
    expected = np.array([own_loss(model, row) for row in rows]).T
    assert losses.shape == (2, 5)
    np.testing.assert_array_equal(losses[1], expected[1])  # supervised token counts, in the input order
    np.testing.assert_allclose(losses[0], expected[0], rtol=1e-4, atol=1e-4)


def prompt_learning_model(tiny_model_dir, folder, method: str):
    """The tiny model with a freshly initialised (random) `method` adapter, saved and loaded as evaluation loads it."""
    from domaintune.config import ModelConfig
    from domaintune.methods import get_method
    from domaintune.models.loading import load_causal_lm, load_trained_model

    config = ModelConfig(name=str(tiny_model_dir))
    module = get_method(method)
    torch.manual_seed(0)
    module.apply(load_causal_lm(config), module.Config(num_virtual_tokens=8)).save_pretrained(folder)
    return load_trained_model(config, folder)


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_example_losses_of_prompt_learning_models_equal_pefts_own_loss(tiny_model_dir, tmp_path, method):
    model = prompt_learning_model(tiny_model_dir, tmp_path, method)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = examples()
    losses = example_losses(model, tokenizer, rows, batch_size=2, bf16=False)
    expected = np.array([own_loss(model, row) for row in rows]).T
    np.testing.assert_array_equal(losses[1], expected[1])
    np.testing.assert_allclose(losses[0], expected[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_the_loss_before_training_is_the_base_models_under_a_random_soft_prompt_or_prefix(tiny_model_dir, method):
    from domaintune.config import ModelConfig
    from domaintune.methods import get_method
    from domaintune.models.loading import load_causal_lm

    config = ModelConfig(name=str(tiny_model_dir))
    torch.manual_seed(0)
    blocks = [{"input_ids": torch.randint(5, 1000, (24,)).tolist()} for _ in range(3)]
    base = inference.block_loss(load_causal_lm(config), blocks)
    module = get_method(method)
    tuned = module.apply(load_causal_lm(config), module.Config(num_virtual_tokens=8))
    with_adapter = inference.block_loss(tuned, blocks)
    assert abs(with_adapter - base) > 1e-3  # the random adapter is no identity
    assert inference.block_loss_before_training(tuned, blocks) == pytest.approx(base, abs=1e-6)
    assert inference.block_loss(tuned, blocks) == with_adapter  # switched back on afterwards
