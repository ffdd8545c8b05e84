"""The causal-LM trainer for every method: prepared splits + method -> a transformers Trainer.

The Trainer stays the loop so checkpoints, resume, callbacks and logging are the standard ones. What
varies by objective (how rows become examples, whether domain perplexity is measured) is passed in
by the caller; nothing here knows an objective.
"""
from __future__ import annotations

import resource

from rich.console import Console

from domaintune.config import Recipe
from domaintune.config.runtime import configure_threads, use_bf16
from domaintune.core import chat
from domaintune.core.errors import DomaintuneError
from domaintune.data.balance import balanced_rows
from domaintune.methods import get_method, load_kwargs, supports_packing
from domaintune.models.inference import block_loss, block_loss_before_training, perplexity
from domaintune.models.loading import load_causal_lm, load_tokenizer
from domaintune.storage.rundir import RunDir
from domaintune.training.callbacks import run_callbacks
from domaintune.training.checkpoints import atomic_trainer, save_final
from domaintune.training.forecast import (
    announce_training,
    fuses_lora,
    real_tokens_per_step,
    record_throughput,
    setup_key,
)
from domaintune.training.fused_lora import fuse_lora_layers, unfuse_lora_layers
from domaintune.training.packing import batching


def encode_split(rows: list[dict], tokenizer, max_length: int, encode_rows=None):
    """The rows' training examples as a Dataset: one per row by its shape (core/chat.py), or what
    `encode_rows(tokenizer, rows, max_length)` makes; either way without examples that supervise nothing."""
    from datasets import Dataset

    if encode_rows is None:
        return Dataset.from_list(chat.encode_rows(tokenizer, rows, max_length))
    return Dataset.from_list(chat.supervised(encode_rows(tokenizer, rows, max_length)))


def _numel(parameter) -> int:
    # A 4-bit weight (qlora) is stored packed, two values a byte; count the weights it stands for.
    state = getattr(parameter, "quant_state", None)
    return state.shape.numel() if state is not None else parameter.numel()


def count_parameters(model) -> dict:
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    total = sum(_numel(p) for p in model.parameters())
    return {"trainable": trainable, "total": total, "share": trainable / total if total else 0.0}


def per_step_settings(cuda: bool, packing: bool) -> dict:
    """TrainingArguments that decide what the loop does between steps, per device.

    On a CPU nothing waits, so the loop keeps its conveniences: a NaN filter on each step's loss and a
    count of the tokens seen (for the progress line's tok/s). On a GPU each of those reads a value back
    from the device every step (`isnan(loss)` as a Python bool; the token count sent to the device and
    `.item()`-ed back), which drains the GPU's queue while the host waits; batches are copied from
    pageable memory, which blocks the same way. There, batches are built in two worker processes
    into pinned memory and copied without blocking, and the loss is read back only at logging steps."""
    import os

    if not cuda:
        return dict(
            logging_nan_inf_filter=True,
            # Packed rows hold no padding; counting "non_padding" there would subtract real EOS tokens.
            include_num_input_tokens_seen="all" if packing else "non_padding",
            dataloader_num_workers=0,
            dataloader_pin_memory=False,  # pinning only helps host-to-GPU copies
        )
    workers = 2 if (os.cpu_count() or 1) >= 4 else 0
    return dict(
        logging_nan_inf_filter=False,
        include_num_input_tokens_seen="no",
        dataloader_num_workers=workers,
        dataloader_persistent_workers=workers > 0,
        dataloader_pin_memory=True,
        accelerator_config={"non_blocking": True},
    )


def training_arguments(recipe: Recipe, run: RunDir, has_validation: bool, bf16: bool, cls=None, **overrides):
    """The recipe's TrainingArguments; `cls` a subclass (sentence-transformers'), `overrides` settings that differ."""
    import torch
    from transformers import TrainingArguments

    config = recipe.training
    prepare_trackers(config.report_to, run, recipe.name)
    early_stopping = config.early_stopping is not None and has_validation
    values = dict(
        output_dir=str(run.checkpoints),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.lr,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler,
        max_grad_norm=config.max_grad_norm,
        eval_strategy="steps" if has_validation else "no",
        eval_steps=config.eval_every,
        save_strategy="steps",
        save_steps=config.save_every,
        save_total_limit=config.keep_checkpoints,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=config.log_every,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),  # transformers refuses bf16 on CPU unless told it is a CPU run
        # Packed batches have no padding to save, so length grouping would only bias the order.
        train_sampling_strategy="group_by_length" if config.group_by_length and not config.packing else "random",
        torch_compile=config.compile,
        neftune_noise_alpha=config.neftune_alpha,
        label_names=["labels"],  # peft's forward signature hides `labels` from the Trainer's detection
        prediction_loss_only=True,  # validation needs the loss only; gathering logits costs GBs at a 49k vocabulary
        seed=recipe.seed,
        data_seed=recipe.seed,
        # TensorBoard is written by domaintune's own callback (trainer_callbacks); the others by transformers'.
        report_to=[name for name in config.report_to if name != "tensorboard"] or "none",
        run_name=run.root.name,
        project=recipe.name,
        trackio_space_id=None,  # trackio stays on this machine: no Space, nothing pushed to the Hub
        trackio_static_space_id=False,
        disable_tqdm=True,
        **per_step_settings(torch.cuda.is_available(), config.packing),
        # Every trainable parameter takes part in each forward pass; searching for unused ones costs DDP a graph walk.
        ddp_find_unused_parameters=False,
    )
    return (cls or TrainingArguments)(**{**values, **overrides})


TRACKER_PACKAGES = {"mlflow": "mlflow", "trackio": "trackio"}
_mlflow_store: list[str] = []  # the MLFLOW_TRACKING_URI set here for an earlier run of this process


def prepare_trackers(report_to: list[str], run: RunDir, experiment: str) -> None:
    """Refuse a tracker that isn't installed (as training starts, not after it), and point MLflow at a
    store in the run directory unless the user's MLFLOW_TRACKING_URI says where: no server is needed."""
    import importlib.util
    import os

    for name in report_to:
        package = TRACKER_PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise DomaintuneError(f"training.report_to: {name} is not installed; pip install 'domaintune[{name}]' "
                                  f"(or remove {name} from training.report_to)")
    if "mlflow" in report_to and os.environ.get("MLFLOW_TRACKING_URI") in (None, "", *_mlflow_store):
        os.environ["MLFLOW_TRACKING_URI"] = (run.root / "mlruns").as_uri()
        os.environ["MLFLOW_EXPERIMENT_NAME"] = experiment
        _mlflow_store.append(os.environ["MLFLOW_TRACKING_URI"])


def trainer_callbacks(run: RunDir, recipe: Recipe, args, has_validation: bool, console: Console, callbacks: list | None) -> list:
    """A run's callbacks (training/callbacks.py), with TensorBoard (training.report_to) before the caller's."""
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    trackers = []
    if "tensorboard" in recipe.training.report_to:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        trackers.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run.tensorboard)) if args.should_save else None))
    return run_callbacks(run, recipe, console, [*trackers, *(callbacks or [])],
                         recipe.training.early_stopping if has_validation else None)


def training_rows(run: RunDir, recipe: Recipe, console: Console) -> list[dict]:
    """The prepared train split, with rare answers repeated when the recipe balances labels."""
    rows = run.read_split("train")
    if not recipe.data.balance_labels:
        return rows
    balanced, counts = balanced_rows(rows, recipe.seed)
    if not counts:
        console.print("[yellow]data.balance_labels: the answers are not a closed set of labels; rows used as they are.")
        return rows
    console.print("Balanced labels (training rows before → after): "
                  + ", ".join(f"{answer} {before} → {after}" for answer, (before, after) in counts.items()))
    return balanced


def train_causal_lm(run: RunDir, resume: bool = False, callbacks: list | None = None, console: Console | None = None,
                    recipe: Recipe | None = None, encode_rows=None, domain_perplexity: bool = False) -> dict:
    """The default trainer: a causal LM on token labels (SFT, causal LM, pretrain blocks, instructions).
    `recipe` replaces the run's own where an objective adjusts it (fewshot's regularisation);
    `encode_rows` turns a split's rows into examples (pretrain: blocks); `domain_perplexity` measures
    the validation examples' perplexity before and after training."""
    from transformers import PrinterCallback, Trainer, set_seed

    console = console or Console(stderr=True)
    recipe = recipe or run.recipe()
    if recipe.training.packing and not supports_packing(recipe.method):
        # Virtual tokens (prefix/prompt tuning) are prepended per row, which a packed row can't express.
        console.print(f"[yellow]{recipe.method.name}: packing is off for this method; training uses padded batches.")
        recipe.training.packing = False
    threads = configure_threads(recipe.training)
    bf16 = use_bf16(recipe)
    set_seed(recipe.seed)

    tokenizer = load_tokenizer(recipe.model)
    train_set = encode_split(training_rows(run, recipe, console), tokenizer, recipe.data.max_tokens, encode_rows)
    validation_set = encode_split(run.read_split("validation"), tokenizer, recipe.data.max_tokens, encode_rows)
    if len(train_set) == 0:
        raise DomaintuneError(f"{run.data / 'train.jsonl'}: no trainable rows (run `domaintune data prepare` first?)")
    has_validation = len(validation_set) > 0
    args = training_arguments(recipe, run, has_validation, bf16)
    if not args.should_save:
        console = Console(quiet=True)  # in a multi-process run only rank 0 reports; it alone writes run files
    if not has_validation and recipe.training.early_stopping is not None:
        console.print("[yellow]No validation rows: validation and early stopping are off for this run.")

    method = get_method(recipe.method.name)
    model = load_causal_lm(recipe.model, load_kwargs=load_kwargs(recipe.method))
    model.config.use_cache = False  # the KV cache is useless while training and costs memory
    model = method.apply(model, recipe.method)
    fused = fuse_lora_layers(model) if fuses_lora(recipe, bf16) else 0
    parameters = count_parameters(model)
    console.print(
        f"[bold]{recipe.method.name}[/] on {recipe.model.name}: {parameters['trainable']:,} trainable of "
        f"{parameters['total']:,} parameters ({parameters['share']:.2%}) · {len(train_set)} train rows · "
        f"{threads} thread(s) · {'bf16' if bf16 else 'fp32'}"
        f"{' · packed' if recipe.training.packing else ''}{f' · {fused} fused LoRA layers' if fused else ''}"
    )

    speed_key = setup_key(recipe, threads, bf16)
    lengths = {name: [len(ids) for ids in rows["input_ids"]] for name, rows in (("train", train_set), ("validation", validation_set)) if len(rows)}
    announce_training(recipe, speed_key, lengths, console)
    collator, compute_loss = batching(
        model, tokenizer, recipe.training.packing, recipe.training.supervised_logits_only, recipe.training.pack_tokens,
        device=args.device, bf16=bf16,
    )
    trainer = atomic_trainer(Trainer)(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=validation_set if has_validation else None,
        data_collator=collator,
        compute_loss_func=compute_loss,
        processing_class=tokenizer,
        callbacks=trainer_callbacks(run, recipe, args, has_validation, console, callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # our progress bar and metrics.jsonl replace its raw dict prints
    checkpoint = run.last_checkpoint(console) if resume else None
    if resume and checkpoint is None:
        console.print(f"[yellow]No checkpoint in {run.checkpoints}; starting from step 0.")
    elif checkpoint is not None:
        console.print(f"Resuming from {checkpoint.name}")
    domain_loss = {}
    if domain_perplexity and has_validation and checkpoint is None:
        domain_loss["before"] = block_loss_before_training(model, validation_set)
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if fused:
        unfuse_lora_layers(trainer.model)
    if domain_loss:
        domain_loss["after"] = block_loss(trainer.model, validation_set)

    summary = {
        "method": recipe.method.name,
        "global_step": trainer.state.global_step,
        "train_loss": output.training_loss,
        "best_eval_loss": trainer.state.best_metric,
        "stopped_early": trainer.state.global_step < trainer.state.max_steps,
        "train_rows": len(train_set),
        "validation_rows": len(validation_set),
        "parameters": parameters,
        "threads": threads,
        "bf16": bf16,
        "runtime_seconds": output.metrics.get("train_runtime"),
    }
    if domain_loss:
        summary["domain_perplexity"] = {key: perplexity(value) for key, value in domain_loss.items()}
        console.print(
            f"Domain perplexity on the validation blocks: {summary['domain_perplexity']['before']:.2f} before, "
            f"{summary['domain_perplexity']['after']:.2f} after training"
        )
    def save(folder):
        if hasattr(method, "save_trained"):  # a method with its own artifact format (not peft, not full weights)
            if args.should_save:
                method.save_trained(trainer.model, folder)
        else:
            trainer.save_model(str(folder))
        if args.should_save:
            tokenizer.save_pretrained(str(folder))
            run.write_training_summary(summary, folder)

    save_final(trainer, run, save)
    if args.should_save and checkpoint is None and summary["runtime_seconds"]:
        # Remember this setup's speed so the next `train` of it can say how long it will take.
        record_throughput(speed_key, {
            "tokens_per_second": real_tokens_per_step(recipe, lengths) * trainer.state.global_step / summary["runtime_seconds"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        })
    return summary
