"""Preference objectives on tiny models: each must move its own measure the right way."""
import json
from pathlib import Path

import pytest

from domaintune import api
from domaintune.workflows.pipeline import train_run

WORDS = ["yes", "no", "maybe", "[", "]", "red", "blue", "green", "one", "two", "three", "cat", "dog", "sun", "moon",
         "tree", "bank", "loan", "rate", "fee"]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in run.metrics.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def word_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama over a 26-word vocabulary: sampled answers are short word lists, so a reward on
    words gets signal at once (a 49k-token random model almost never samples a given token)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("word-llama")
    vocab = {word: index for index, word in enumerate(["<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant", "system", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<|im_end|>")
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|> {{ m.role }} {{ m.content }} <|im_end|> {% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, initializer_range=0.1,
                         eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|im_end|>"], bos_token_id=None)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def recipe(tmp_path: Path, model_dir: Path, data: str, objective: dict, method: dict | None = None, **training) -> dict:
    return {
        "name": objective["name"],
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": str(model_dir)},
        "data": {"train": [data], "max_tokens": 64, "near_dedup": {"enabled": False}, "quality": {"enabled": False},
                 "split": {"validation": 0.2, "test": 0.2}},
        "objective": objective,
        "method": method or {"name": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"max_steps": 8, "batch_size": 4, "lr": 1e-2, "eval_every": 100, "save_every": 100, "log_every": 1,
                     "threads": 1, "precision": "fp32", "warmup_ratio": 0.0, "early_stopping": None, "lr_scheduler": "constant",
                     **training},
        "evaluation": {"max_samples": 4, "max_new_tokens": 8, "forgetting": False, "batch_size": 4},
    }


def ner_pairs(count: int) -> list[dict]:
    """Chosen: the bracketed entity list; rejected: prose about the same name."""
    cities = ["Paris", "Berlin", "Madrid", "Rome", "Vienna", "Lisbon", "Oslo", "Dublin"]
    return [{"prompt": f"Request {i}: where is office {cities[i % 8]}?", "chosen": f"[{cities[i % 8]} - LOCATION]",
             "rejected": f"The office is somewhere around {cities[i % 8]}, I think."} for i in range(count)]


def test_reward_model_learns_a_preference_and_reloads(tmp_path, tiny_model_dir):
    from domaintune.evaluation.reward_sources import RewardModel
    from domaintune.objectives.reward import pairwise_accuracy

    data = write_jsonl(tmp_path / "pairs.jsonl", ner_pairs(40))
    run, _ = api.prepare_data(recipe(tmp_path, tiny_model_dir, data, {"name": "reward"}, max_steps=10, lr=5e-3))
    train_run(run)
    results = api.evaluate(run)
    accuracy = results["reward_model"]["test"]["accuracy"]
    assert results["reward_model"]["test"]["pairs"] == 8 and accuracy >= 0.875  # chance is 0.5
    # model/ is a complete scoring model: it reloads without peft and scores as evaluated.
    pairs = [{"prompt": [{"role": "user", "content": "where?"}], "chosen": [{"role": "assistant", "content": "[Oslo - LOCATION]"}],
              "rejected": [{"role": "assistant", "content": "Somewhere around Oslo, I think."}]}]
    assert pairwise_accuracy(RewardModel(run.model), pairs)["accuracy"] == 1.0
    assert (run.root / "preferences.html").read_text(encoding="utf-8").count("pairwise accuracy") == 1


def test_dpo_raises_the_chosen_over_rejected_margin(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", ner_pairs(24))
    run, _ = api.prepare_data(recipe(tmp_path, tiny_model_dir, data, {"name": "dpo", "beta": 0.5}, max_steps=6, batch_size=4))
    train_run(run)
    margins = [record["rewards/margins"] for record in metrics(run) if "rewards/margins" in record]
    assert margins[0] == pytest.approx(0.0, abs=1e-6)  # the policy starts as its reference
    assert min(margins[-3:]) > 0.5
    assert (run.model / "adapter_config.json").exists()


def test_a_preference_objective_can_be_tuned_with_early_stopping(tmp_path, tiny_model_dir):
    import domaintune

    data = write_jsonl(tmp_path / "pairs.jsonl", ner_pairs(24))
    search = recipe(tmp_path, tiny_model_dir, data, {"name": "dpo", "beta": 0.5}, max_steps=4, eval_every=2,
                    early_stopping={"patience": 2})
    search["tune"] = {"space": {"training.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}, "pruner": "none"}
    result = domaintune.tune(search, trials=1)
    [trial] = result.study.trials
    run = api.RunDir.open(trial.user_attrs["run_dir"])
    assert trial.value == run.training_summary()["best_eval_loss"] > 0


def test_dpo_with_bottleneck_adapters_saves_the_adapters_evaluation_loads(tmp_path, tiny_model_dir):
    """A method with its own artifact format: the Trainer's save_model wrote the base model with the adapters as
    stray keys, so the tuned model evaluated and exported as the untrained base."""
    import torch

    from domaintune.config import ModelConfig
    from domaintune.models.loading import load_causal_lm, load_trained_model

    data = write_jsonl(tmp_path / "pairs.jsonl", ner_pairs(24))
    run, _ = api.prepare_data(recipe(tmp_path, tiny_model_dir, data, {"name": "dpo", "beta": 0.5}, {"name": "adapters"},
                                     max_steps=2, batch_size=4))
    train_run(run)
    assert (run.model / "bottleneck_adapter.safetensors").exists()
    config = ModelConfig(name=str(tiny_model_dir))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        tuned, base = load_trained_model(config, run.model)(input_ids=ids).logits, load_causal_lm(config)(input_ids=ids).logits
    assert not torch.allclose(tuned, base)


def test_grpo_with_a_regex_reward_raises_the_share_of_matching_answers(tmp_path, word_model_dir):
    prompts = [{"prompt": f"{a} {b}", "chosen": "yes", "rejected": "no"} for a in WORDS[5:12] for b in WORDS[12:16]]
    data = write_jsonl(tmp_path / "prompts.jsonl", prompts)
    objective = {"name": "grpo", "rewards": [{"regex": r"\byes\b"}], "num_generations": 4, "max_new_tokens": 6, "beta": 0.02}
    run, _ = api.prepare_data(recipe(tmp_path, word_model_dir, data, objective, max_steps=24, batch_size=8, lr=3e-2))
    train_run(run)
    rewards = [record["reward"] for record in metrics(run) if "reward" in record]
    first, last = sum(rewards[:6]) / 6, sum(rewards[-6:]) / 6
    assert last > first + 0.2, rewards


def ppo_run(tmp_path: Path, model_dir: Path, kl_coef: float) -> list[dict]:
    tmp_path.mkdir()
    reward_file = tmp_path / "my_rewards.py"
    reward_file.write_text(
        "def share_of_yes(prompts, completions):\n"
        "    return [c.split().count('yes') / max(len(c.split()), 1) for c in completions]\n", encoding="utf-8")
    prompts = [{"prompt": f"{a} {b}", "chosen": "yes", "rejected": "no"} for a in WORDS[5:12] for b in WORDS[12:16]]
    data = write_jsonl(tmp_path / "prompts.jsonl", prompts)
    objective = {"name": "ppo", "rewards": [{"function": f"{reward_file}:share_of_yes"}], "max_new_tokens": 6,
                 "kl_coef": kl_coef, "ppo_epochs": 4}
    run, _ = api.prepare_data(recipe(tmp_path, model_dir, data, objective, {"name": "full"}, max_steps=30, batch_size=16, lr=5e-3))
    summary = train_run(run)
    assert summary["global_step"] == 30 and (run.model / "model.safetensors").exists()
    return metrics(run)


def test_ppo_raises_a_python_reward_and_the_kl_penalty_bounds_the_drift(tmp_path, word_model_dir):
    free, penalised = ppo_run(tmp_path / "free", word_model_dir, 0.0), ppo_run(tmp_path / "kl", word_model_dir, 0.05)
    for records in (free, penalised):
        rewards = [record["reward"] for record in records]
        assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.3, rewards  # the share of "yes" words rises
        assert records[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # the first rollout comes from the reference itself
    # Unpenalised, the policy drifts as far as the reward pulls it; the penalty keeps it much nearer.
    assert sum(r["kl"] for r in penalised[-5:]) < 0.6 * sum(r["kl"] for r in free[-5:])


@pytest.mark.gpu
def test_ppo_runs_its_own_loop_on_the_gpu(tmp_path, word_model_dir):
    """PPO's loop is not a Trainer: it places the policy, reference and value head on the GPU itself."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    rewards = [record["reward"] for record in ppo_run(tmp_path / "gpu", word_model_dir, 0.05)]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.3, rewards


def test_stages_rank_then_reward_model_then_ppo_on_the_original_model(tmp_path, tiny_model_dir):
    rows = [{"prompt": f"Request {i}: where is the office?", "responses": [f"[City{i} - LOCATION]", f"[City{i} - PERSON]",
                                                                           f"It is in City{i}, I think."]} for i in range(15)]
    data = write_jsonl(tmp_path / "ranking.jsonl", rows)
    staged = recipe(tmp_path, tiny_model_dir, data, {"name": "reward"}, max_steps=2)
    staged["name"] = "rlhf"
    staged["evaluation"]["max_new_tokens"] = 4
    staged["stages"] = [
        {"label": "reward", "objective": {"name": "reward"}},
        {"label": "ppo", "objective": {"name": "ppo", "rewards": [{"model": "stage:reward"}], "max_new_tokens": 4, "ppo_epochs": 1}},
    ]
    last = api.run(staged)
    summary = json.loads((tmp_path / "runs" / "rlhf-stages.json").read_text(encoding="utf-8"))
    assert [stage["objective"] for stage in summary] == ["reward", "ppo"]
    # PPO tunes the original model (not the reward model) against the reward stage's model.
    ppo_recipe = last.recipe()
    assert ppo_recipe.model.name == str(tiny_model_dir)
    assert ppo_recipe.objective.rewards[0].model == summary[0]["run_dir"]
    results = json.loads((last.eval / "results.json").read_text(encoding="utf-8"))
    assert results["preference"]["reward_win_rate"]["items"] == 3
    assert [point[0] for point in results["preference"]["curves"]["kl"]] == [1, 2]


@pytest.mark.parametrize("objective", [{"name": "kto", "threshold": 3}, {"name": "orpo", "beta": 0.5}])
def test_kto_and_orpo_train_on_rated_answers_and_log_their_rewards(tmp_path, tiny_model_dir, objective):
    rows = [{"prompt": f"Request {i}: where is the office?", "response": answer, "score": score}
            for i in range(12) for answer, score in ((f"[City{i} - LOCATION]", 5), (f"It is in City{i}, I think.", 1))]
    data = write_jsonl(tmp_path / "rated.jsonl", rows)
    run, _ = api.prepare_data(recipe(tmp_path, tiny_model_dir, data, objective, max_steps=4, batch_size=4))
    summary = train_run(run)
    logged = metrics(run)
    assert summary["global_step"] == 4 and (run.model / "adapter_model.safetensors").exists()
    # (A KTO batch may hold only desirable or only undesirable answers; those steps log one side.)
    gaps = [record["rewards/chosen"] - record["rewards/rejected"] for record in logged
            if "rewards/chosen" in record and "rewards/rejected" in record and "loss" in record]
    assert len(gaps) >= 2 and gaps[-1] > gaps[0]  # the desirable answers gain on the undesirable ones
