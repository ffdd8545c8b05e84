"""Atomic checkpoints and final models for transformers' Trainer (and TRL's trainers, its subclasses).

The Trainer writes checkpoint-N in place, file by file, so a kill mid-save leaves a folder that looks
like the latest checkpoint but holds a truncated trainer_state.json or weights. Here its own
`_save_checkpoint` writes into <checkpoints>/.partial/ (through `_get_output_dir`, the one place it takes
the folder from); the folder is then flushed to disk and renamed into place, and old ones are rotated
after that, so the last complete checkpoint is never deleted before the new one is whole.

A kill after the last step's checkpoint but before the final save leaves a checkpoint of a finished
training (at max_steps, or where early stopping ended it). transformers (5.23) resumed from it trains on:
one step past max_steps when max_steps ends mid-epoch, up to the next validation after early stopping.
Such a checkpoint is loaded as the trained model instead of being trained from."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from domaintune.storage.atomic import commit_folder, staging_folder
from domaintune.storage.rundir import RunDir

STAGING = ".partial"


class AtomicCheckpoints:
    """Mixed in before a Trainer class (`atomic_trainer`)."""

    _staging_root: str | None = None

    def _get_output_dir(self, trial) -> str:
        return self._staging_root or super()._get_output_dir(trial)

    def train(self, resume_from_checkpoint: str | None = None, **kwargs):
        from transformers.trainer import TRAINER_STATE_NAME
        from transformers.trainer_callback import TrainerState
        from transformers.trainer_utils import TrainOutput

        folder = resume_from_checkpoint if isinstance(resume_from_checkpoint, (str, os.PathLike)) else None
        state_file = folder and os.path.join(folder, TRAINER_STATE_NAME)
        state = TrainerState.load_from_json(state_file) if state_file and os.path.isfile(state_file) else None
        control = (state.stateful_callbacks.get("TrainerControl") or {}).get("args", {}) if state else {}
        if state is None or (state.global_step < state.max_steps and not control.get("should_training_stop")) \
                or self._asks_for_more(state):
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        self.state = state
        self._load_from_checkpoint(resume_from_checkpoint)
        # The callbacks see a training that begins and ends at once (metrics.jsonl drops lines past the checkpoint).
        self.control = self.callback_handler.on_train_begin(self.args, self.state, self.control)
        best = self.state.best_model_checkpoint
        if self.args.load_best_model_at_end and best and os.path.exists(best):
            self._load_best_model()  # what the uninterrupted training ended with
        self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
        # The training loss the Trainer would report: the mean of the logged losses stands in for it.
        losses = [record["loss"] for record in state.log_history if "loss" in record]
        return TrainOutput(state.global_step, sum(losses) / len(losses) if losses else float("nan"), {})

    def _asks_for_more(self, state) -> bool:
        """Whether this training was asked for more than the finished checkpoint's was (`--resume --force` with more
        steps or epochs): then it continues from there instead of ending at once. (Early stopping ends a training
        short of its plan; resumed with the same plan, it still ends there.)"""
        if self.args.max_steps > 0:
            return self.args.max_steps > state.max_steps
        return self.args.num_train_epochs > (state.num_train_epochs or 0)

    def _save_checkpoint(self, model, trial) -> None:
        from transformers.trainer import TRAINER_STATE_NAME
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        run_dir = super()._get_output_dir(trial)
        staging_root = os.path.join(run_dir, STAGING)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)  # what a killed save left
        self.accelerator.wait_for_everyone()
        self._staging_root = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        # The library looked for the best checkpoint in the staging folder; it is in run_dir (or is this one).
        best = self.state.best_global_step and os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
        self.state.best_model_checkpoint = best if best and (os.path.exists(best) or self.state.best_global_step == self.state.global_step) else None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            self.state.save_to_json(os.path.join(staging_root, name, TRAINER_STATE_NAME))
            commit_folder(Path(staging_root, name), Path(run_dir, name))
            os.rmdir(staging_root)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()


def atomic_trainer(trainer_class):
    """`trainer_class` with atomic checkpoints."""
    return type(trainer_class.__name__, (AtomicCheckpoints, trainer_class), {})


def save_final(trainer, run: RunDir, save) -> None:
    """`save(folder)` on every process (FSDP and DeepSpeed gather the weights together) into a staging
    folder that then replaces run.model whole; `save` writes only where a process should."""
    staging = staging_folder(run.model)
    if trainer.args.should_save:
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    save(staging)
    trainer.accelerator.wait_for_everyone()
    if trainer.args.should_save:
        commit_folder(staging, run.model)
