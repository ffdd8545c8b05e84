"""Training with TRL's trainers, as the preference objectives (reward, dpo, kto, orpo, grpo; ppo's
policy) do: the TRL config built from the recipe's training section, the policy with the recipe's
method applied, the callbacks, and saving the trained model."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from rich.console import Console

from domaintune.config.runtime import configure_threads, use_bf16
from domaintune.core.errors import DomaintuneError
from domaintune.methods import get_method, load_kwargs
from domaintune.models.loading import load_causal_lm, load_tokenizer
from domaintune.storage.rundir import RunDir
from domaintune.training.callbacks import run_callbacks
from domaintune.training.checkpoints import atomic_trainer, save_final
from domaintune.training.trainer import count_parameters, training_arguments


def trl_config(config_class, recipe, run: RunDir, has_validation: bool, **settings):
    """A TRL config (a TrainingArguments subclass) with the recipe's training settings and `settings`."""
    from transformers import TrainingArguments

    args = training_arguments(recipe, run, has_validation, use_bf16(recipe))
    values = {field.name: getattr(args, field.name) for field in fields(TrainingArguments) if field.init}
    # TRL batches hold prompt/chosen/rejected tensors, not the causal-LM engine's labels and lengths.
    values.update(label_names=[], train_sampling_strategy="random", include_num_input_tokens_seen="no",
                  neftune_noise_alpha=None, torch_compile=False)
    values.update(settings)
    return config_class(**values)


def load_policy(recipe):
    """The base causal LM with the recipe's method applied: a peft model (its reference is the base with
    the adapter disabled) or the full model (TRL keeps a frozen copy as the reference)."""
    model = load_causal_lm(recipe.model, load_kwargs=load_kwargs(recipe.method))
    model.config.use_cache = False
    return get_method(recipe.method.name).apply(model, recipe.method)


def split_or_fail(run: RunDir, make, *extra) -> tuple:
    """(train examples, validation examples) from the prepared splits through `make(rows, *extra)`."""

    train, validation = (make(run.read_split(split), *extra) for split in ("train", "validation"))
    if not train:
        objective = run.recipe().objective.name
        raise DomaintuneError(
            f"{run.data / 'train.jsonl'}: no training examples for objective {objective} (the Objectives table of "
            "the README says what data it takes; run `domaintune data prepare` first?)"
        )
    return train, validation


def run_trainer(trainer, run: RunDir, recipe, resume: bool, console: Console, train_rows: int, save=None) -> dict:
    """Train (resuming from the last checkpoint if asked), save the model (with `save(folder)` where the
    trainer's own saving is not what later steps load) and tokenizer, write training.json."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our progress bar and metrics.jsonl replace its raw dict prints
    checkpoint = run.last_checkpoint(console) if resume else None
    if resume and checkpoint is None:
        console.print(f"[yellow]No checkpoint in {run.checkpoints}; starting from step 0.")
    parameters = count_parameters(trainer.model)
    console.print(f"[bold]{recipe.objective.name}[/] with {recipe.method.name} on {recipe.model.name}: "
                  f"{parameters['trainable']:,} trainable parameters · {train_rows} training examples")
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    method = get_method(recipe.method.name)
    if save is None and hasattr(method, "save_trained"):
        # Its own artifact format, as train_causal_lm saves it: the Trainer's save_model would write the base model
        # with the adapter's weights as stray keys, which every later load ignores.
        def save(folder: str) -> None:
            if trainer.args.should_save:
                method.save_trained(trainer.model, Path(folder))
    summary = {
        "objective": recipe.objective.name,
        "method": recipe.method.name,
        "global_step": trainer.state.global_step,
        "train_loss": output.training_loss,
        "best_eval_loss": trainer.state.best_metric,  # what `tune` minimises where early stopping restored the best
        "stopped_early": trainer.state.global_step < trainer.state.max_steps,
        "train_rows": train_rows,
        "parameters": parameters,
        "runtime_seconds": output.metrics.get("train_runtime"),
    }

    def save_all(folder):
        (save or trainer.save_model)(str(folder))
        if trainer.args.should_save:
            trainer.processing_class.save_pretrained(str(folder))
            run.write_training_summary(summary, folder)

    save_final(trainer, run, save_all)
    return summary


def run_trl(trainer_class, args, run: RunDir, recipe, resume: bool, console: Console | None, callbacks: list | None,
            train_rows: list[dict], validation_rows: list[dict], **trainer_kwargs) -> dict:
    """Train a TRL preference trainer on the policy (the recipe's model and method)."""
    from datasets import Dataset
    from transformers import set_seed

    console = console or Console(stderr=True)
    configure_threads(recipe.training)
    set_seed(recipe.seed)
    trainer = atomic_trainer(trainer_class)(
        model=load_policy(recipe),
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(validation_rows) if validation_rows else None,
        processing_class=load_tokenizer(recipe.model),
        callbacks=run_callbacks(run, recipe, console, callbacks, recipe.training.early_stopping if validation_rows else None),
        **trainer_kwargs,
    )
    return run_trainer(trainer, run, recipe, resume, console, len(train_rows))
