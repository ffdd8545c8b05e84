"""PPO from human feedback (RLHF), written on transformers + peft (TRL 1.16 no longer has PPO).

Each step:
1. rollout: the policy samples an answer to each prompt of the batch (temperature `temperature`);
2. scoring: the recipe's rewards score each answer (usually the reward model of a `reward` run);
3. per-token rewards: -kl_coef · (log π(token) - log π_ref(token)) on every answer token, plus the
   score on the last one, so the policy gains reward without drifting from the frozen reference
   (with LoRA the reference is the same base with the adapter disabled: no second copy in memory);
4. advantages by GAE (gamma, lam) from a value head on the policy's last hidden state, whitened;
5. `ppo_epochs` passes of the clipped policy loss and the clipped value loss over the batch
   (in `mini_batches` pieces), on the answers' tokens only.
Per step metrics.jsonl gets the mean score (`reward`), the KL to the reference (`kl`: the log-ratio
summed over an answer's sampled tokens, averaged over the batch; a sampled estimate, so one batch can
dip below 0), both losses, the clipped share and the answer length.
"""
from __future__ import annotations

import json
import math
import random

from domaintune.config.objectives import PpoConfig
from domaintune.config.runtime import configure_threads, use_bf16
from domaintune.core.chat import render
from domaintune.core.errors import DomaintuneError
from domaintune.data.preferences import prompts_of
from domaintune.evaluation.preference import evaluate_policy
from domaintune.evaluation.reward_sources import reward_function
from domaintune.models.inference import autocast, model_device
from domaintune.models.loading import load_causal_lm, load_tokenizer, on_inference_device
from domaintune.training import trl_trainer
from domaintune.training.trainer import count_parameters

SUMMARY = "prompts + a reward model (or regex/function) → PPO with a KL penalty to a frozen reference (classic RLHF)."
Config = PpoConfig  # the registry and the recipe know an objective by its Config
CURVES = ("reward", "kl", "policy_loss", "value_loss", "response_length")


def _masked_mean(values, mask):
    return (values * mask).sum() / mask.sum().clamp(min=1)


def _whiten(values, mask):
    mean = _masked_mean(values, mask)
    variance = _masked_mean((values - mean) ** 2, mask)
    return (values - mean) * (variance + 1e-8).rsqrt() * mask


class Policy:
    """The trained model with its value head and the frozen reference it is kept near."""

    def __init__(self, recipe):
        import torch
        from peft import PeftModel

        # On the GPU where there is one: the loop is ours, not a Trainer that would place the model.
        self.model = on_inference_device(trl_trainer.load_policy(recipe))
        self.model.eval()  # dropout off: the ratio of new to old probabilities must see the same network
        self.device = model_device(self.model)
        # A peft model is its own reference with the adapter disabled; a fully trained one needs a frozen copy.
        self.reference = None if isinstance(self.model, PeftModel) else \
            on_inference_device(load_causal_lm(recipe.model)).eval().requires_grad_(False)
        self.value_head = torch.nn.Linear(self.model.config.get_text_config().hidden_size, 1, device=self.device)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)

    def parameters(self) -> list:
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.value_head.parameters())

    def _forward(self, model, sequences, attention, prompt_length: int, temperature: float, values: bool):
        positions = (attention.cumsum(1) - 1).clamp(min=0)  # left padding: positions start at each prompt
        out = model(input_ids=sequences, attention_mask=attention, position_ids=positions,
                    output_hidden_states=values, use_cache=False)
        logits = out.logits[:, prompt_length - 1 : -1].float() / temperature
        logprobs = logits.log_softmax(-1).gather(-1, sequences[:, prompt_length:, None]).squeeze(-1)
        if not values:
            return logprobs, None
        hidden = out.hidden_states[-1][:, prompt_length - 1 : -1].float()
        return logprobs, self.value_head(hidden).squeeze(-1)

    def logprobs_and_values(self, sequences, attention, prompt_length: int, temperature: float):
        return self._forward(self.model, sequences, attention, prompt_length, temperature, True)

    def reference_logprobs(self, sequences, attention, prompt_length: int, temperature: float):
        if self.reference is not None:
            return self._forward(self.reference, sequences, attention, prompt_length, temperature, False)[0]
        with self.model.disable_adapter():
            return self._forward(self.model, sequences, attention, prompt_length, temperature, False)[0]


def rollout(policy: Policy, tokenizer, prompts: list[list[dict]], config: Config, score, bf16: bool) -> dict:
    """Sample answers, score them, and compute the old log-probabilities, values, rewards and advantages."""
    import torch

    texts = [render(tokenizer, prompt, add_generation_prompt=True) for prompt in prompts]
    tokenizer.padding_side = "left"
    device = policy.device
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    prompt_length = batch["input_ids"].shape[1]
    with torch.no_grad(), autocast(bf16, device):
        sequences = policy.model.generate(
            **batch, do_sample=True, temperature=config.temperature, top_k=0, top_p=1.0,
            max_new_tokens=config.max_new_tokens, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
    answer = sequences[:, prompt_length:]
    ended = answer == tokenizer.eos_token_id
    # An answer is its tokens up to and including the first EOS; what follows is padding.
    mask = ((ended.cumsum(1) - ended.long()) == 0).float()
    attention = torch.cat([batch["attention_mask"], mask.long()], dim=1)
    completions = [tokenizer.decode(ids[mask_row.bool()], skip_special_tokens=True).strip() for ids, mask_row in zip(answer, mask)]
    scores = torch.tensor(score(prompts, completions), dtype=torch.float32, device=device)
    with torch.no_grad(), autocast(bf16, device):
        old_logprobs, old_values = policy.logprobs_and_values(sequences, attention, prompt_length, config.temperature)
        reference = policy.reference_logprobs(sequences, attention, prompt_length, config.temperature)
    old_values = old_values * mask
    kl = (old_logprobs - reference) * mask
    rewards = -config.kl_coef * kl
    last = mask.sum(1).long() - 1
    rewards[torch.arange(len(prompts), device=device), last] += scores
    advantages = torch.zeros_like(rewards)
    running = torch.zeros(len(prompts), device=device)
    for t in reversed(range(rewards.shape[1])):  # GAE; masked positions hold zeros and pass nothing back
        next_value = old_values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros(len(prompts), device=device)
        delta = rewards[:, t] + config.gamma * next_value - old_values[:, t]
        running = (delta + config.gamma * config.lam * running) * mask[:, t]
        advantages[:, t] = running
    returns = advantages + old_values
    return {
        "sequences": sequences, "attention": attention, "mask": mask, "prompt_length": prompt_length,
        "old_logprobs": old_logprobs, "old_values": old_values, "returns": returns,
        "advantages": _whiten(advantages, mask), "scores": scores, "kl": kl.sum(1), "completions": completions,
    }


def ppo_update(policy: Policy, optimizer, data: dict, config: Config, max_grad_norm: float, bf16: bool) -> dict:
    """`ppo_epochs` passes of the clipped losses over the rollouts; returns the mean statistics."""
    import torch

    size = data["sequences"].shape[0]
    pieces = [list(range(size))[start :: config.mini_batches] for start in range(min(config.mini_batches, size))]
    totals = {"policy_loss": 0.0, "value_loss": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0}
    updates = 0
    for _ in range(config.ppo_epochs):
        for piece in pieces:
            part = {key: value[piece] for key, value in data.items() if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == size}
            mask = part["mask"]
            with autocast(bf16, policy.device):
                logprobs, values = policy.logprobs_and_values(part["sequences"], part["attention"], data["prompt_length"], config.temperature)
            ratio = torch.exp(logprobs - part["old_logprobs"])
            policy_losses = torch.max(-part["advantages"] * ratio,
                                      -part["advantages"] * ratio.clamp(1 - config.clip_range, 1 + config.clip_range))
            policy_loss = _masked_mean(policy_losses, mask)
            clipped_values = part["old_values"] + (values - part["old_values"]).clamp(-config.value_clip, config.value_clip)
            value_loss = 0.5 * _masked_mean(torch.max((values - part["returns"]) ** 2, (clipped_values - part["returns"]) ** 2), mask)
            optimizer.zero_grad()
            (policy_loss + config.value_coef * value_loss).backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
            optimizer.step()
            with torch.no_grad():
                totals["policy_loss"] += policy_loss.item()
                totals["value_loss"] += value_loss.item()
                totals["clip_fraction"] += _masked_mean(((ratio - 1).abs() > config.clip_range).float(), mask).item()
                totals["approx_kl"] += _masked_mean(part["old_logprobs"] - logprobs, mask).item()
            updates += 1
    return {key: value / updates for key, value in totals.items()}


def train(run, resume=False, callbacks=None, console=None) -> dict:
    """PPO on the prompts of the train split. Logs to metrics.jsonl itself (the loop is not a Trainer,
    so Trainer callbacks do not apply); checkpoints are not written, so a run can't be resumed."""
    import torch
    from rich.console import Console
    from transformers import set_seed

    console = console or Console(stderr=True)
    if resume:
        raise DomaintuneError("objective ppo: --resume is not supported (PPO keeps no checkpoints); start a new run")
    recipe = run.recipe()
    config, training = recipe.objective, recipe.training
    configure_threads(training)
    bf16 = use_bf16(recipe)
    set_seed(recipe.seed)
    prompts, _ = trl_trainer.split_or_fail(run, prompts_of)
    tokenizer = load_tokenizer(recipe.model)
    policy = Policy(recipe)
    score = reward_function(config.rewards)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    steps = training.max_steps if training.max_steps > 0 else math.ceil(training.epochs * len(prompts) / training.batch_size)
    parameters = count_parameters(policy.model)
    console.print(f"[bold]ppo[/] with {recipe.method.name} on {recipe.model.name}: {parameters['trainable']:,} trainable "
                  f"parameters · {len(prompts)} prompts · {steps} steps of {training.batch_size} rollouts")
    rng = random.Random(recipe.seed)
    order: list[int] = []
    run.metrics.parent.mkdir(parents=True, exist_ok=True)
    history = []
    for step in range(1, steps + 1):
        if len(order) < training.batch_size:
            shuffled = list(range(len(prompts)))
            rng.shuffle(shuffled)
            order += shuffled
        batch, order = [prompts[i] for i in order[: training.batch_size]], order[training.batch_size :]
        data = rollout(policy, tokenizer, batch, config, score, bf16)
        stats = ppo_update(policy, optimizer, data, config, training.max_grad_norm, bf16)
        record = {"step": step, "epoch": round(step * training.batch_size / len(prompts), 4),
                  "reward": data["scores"].mean().item(), "kl": data["kl"].mean().item(),
                  "response_length": data["mask"].sum(1).mean().item(), **stats, "learning_rate": training.lr}
        history.append(record)
        with run.metrics.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if step % training.log_every == 0 or step == steps:
            console.print(f"step {step}/{steps} · reward {record['reward']:.3f} · KL {record['kl']:.3f} · "
                          f"policy loss {record['policy_loss']:.4f} · value loss {record['value_loss']:.4f}")
    policy.model.save_pretrained(str(run.model))
    tokenizer.save_pretrained(str(run.model))
    summary = {
        "objective": "ppo", "method": recipe.method.name, "global_step": steps,
        "reward": {"first": history[0]["reward"], "last": history[-1]["reward"]},
        "kl": {"first": history[0]["kl"], "last": history[-1]["kl"]},
        "train_rows": len(prompts), "parameters": parameters, "bf16": bf16,
    }
    (run.model / "training.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def evaluate(run, console=None, harness=None) -> dict:
    return evaluate_policy(run, console, harness, CURVES, run.recipe().objective.rewards)
