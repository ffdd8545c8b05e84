"""A run directory: everything one run produced, self-describing enough to evaluate or export alone.

runs/<name>-<timestamp>/
  recipe.yaml      the resolved recipe (overrides applied, data paths absolute)
  fingerprint.json hashes of the recipe, the prepared splits and the data files (storage/fingerprint.py)
  data/            train/validation/test.jsonl, rejected.jsonl, removed.jsonl, data_card.json
  checkpoints/     checkpoint-<step>/ from the Trainer, the last K kept
  metrics.jsonl    one line per logged training/validation step
  tensorboard/     TensorBoard event files
  model/           the final adapter (adapter methods) or full weights, plus the tokenizer
  eval/            results.json, samples.jsonl
  export/          adapter/ and merged/
  report.html
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from domaintune.config import Recipe, validate_recipe
from domaintune.core.errors import DomaintuneError
from domaintune.storage.fingerprint import data_hash, differences, fingerprint, recipe_hash
from domaintune.storage.jsonl import read_json, read_jsonl, write_json, write_jsonl

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_problem(folder: Path, step: int) -> str | None:
    """Why a Trainer checkpoint can't be resumed from (its trainer state unreadable or of another step,
    a safetensors file shorter than its header says); None when it can."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"trainer_state.json is missing or unreadable ({type(error).__name__})"
    if not isinstance(state, dict) or state.get("global_step") != step:
        return f"trainer_state.json is not the state of step {step}"
    for weights in folder.glob("*.safetensors"):
        if not safetensors_complete(weights):
            return f"{weights.name} is truncated"
    return None


def safetensors_complete(path: Path) -> bool:
    """The file is as long as its header says (8-byte header length, JSON header, then the tensors)."""
    try:
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length))
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return False  # a header cut short or not a safetensors header
    return path.stat().st_size == 8 + length + max(ends, default=0)


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def recipe_file(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def fingerprint_file(self) -> Path:
        return self.root / "fingerprint.json"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    def recipe(self) -> Recipe:
        data = yaml.safe_load(self.recipe_file.read_text(encoding="utf-8"))
        return validate_recipe(data, source=str(self.recipe_file))

    def read_split(self, split: str) -> list[dict]:
        """The prepared rows of `train`, `validation` or `test` ([] when the split is empty)."""
        return read_jsonl(self.data / f"{split}.jsonl")

    def results(self) -> dict:
        """eval/results.json ({} before evaluation)."""
        return read_json(self.eval / "results.json", {})

    def samples(self) -> list[dict]:
        return read_jsonl(self.eval / "samples.jsonl")

    def write_results(self, results: dict, samples: list[dict] | None = None) -> None:
        """eval/results.json and, when given, eval/samples.jsonl (the generated answers, base and tuned)."""
        self.eval.mkdir(parents=True, exist_ok=True)
        write_json(self.eval / "results.json", results)
        if samples is not None:
            write_jsonl(self.eval / "samples.jsonl", samples)

    def training_summary(self) -> dict:
        """model/training.json, what training reported ({} before training)."""
        return read_json(self.model / "training.json", {})

    def write_training_summary(self, summary: dict, folder: Path | None = None) -> dict:
        """model/training.json (or in `folder`, the model folder being written)."""
        folder = Path(folder or self.model)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "training.json", summary)
        return summary

    def write_rejected(self, name: str, rejected: list[dict], console) -> None:
        """Rows an objective can't use, with the reason, next to the data's own rejected.jsonl."""
        path = self.data / f"{name}_rejected.jsonl"
        write_jsonl(path, rejected)
        if rejected:
            console.print(f"[yellow]{len(rejected)} row(s) set aside for {name}, with reasons: {path}", highlight=False)

    def last_checkpoint(self, console=None) -> Path | None:
        """The newest checkpoint that validates; each newer one that doesn't (left by a kill mid-save, or
        damaged since) is skipped and reported on `console`."""
        if not self.checkpoints.is_dir():
            return None
        steps = sorted(
            ((int(match.group(1)), path) for path in self.checkpoints.iterdir() if (match := CHECKPOINT_PATTERN.match(path.name))),
            reverse=True,
        )
        for step, path in steps:
            problem = checkpoint_problem(path, step)
            if problem is None:
                return path
            if console is not None:
                console.print(f"[yellow]{path} is skipped: {problem}", highlight=False)
        return None

    def write_recipe(self, recipe: Recipe) -> None:
        self.recipe_file.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), encoding="utf-8")

    def write_fingerprint(self, recipe: Recipe, accepted: list[str] | None = None) -> None:
        """What the run is made from, once its data is prepared; `accepted`: differences `--force` let pass."""
        write_json(self.fingerprint_file, {**fingerprint(recipe, self.data), "accepted": accepted or []})

    def recipe_hash(self) -> str:
        return read_json(self.fingerprint_file, {}).get("recipe") or recipe_hash(self.recipe())

    def check_resume(self, recipe: Recipe, force: bool, console) -> None:
        """Refuse to continue this run with `recipe` (as given now, overrides applied) where it or the data
        differs from what the run was made from; with `force`, continue with `recipe` and say what differs."""
        stored = read_json(self.fingerprint_file, None)
        if stored is None:  # a run made before fingerprints: its recipe.yaml is all there is to compare
            console.print(f"[yellow]{self.root}: no {self.fingerprint_file.name}; only its recipe is checked, not its data.")
            stored = {"recipe": recipe_hash(self.recipe()), "data": data_hash(self.data), "sources": {}}
        found = differences(stored, self.recipe(), recipe, self.data)
        if not found:
            return
        listed = "".join(f"\n  - {line}" for line in found)
        if not force:
            raise DomaintuneError(
                f"--resume: {self.root} was made from another recipe or data:{listed}\n"
                "Start a new run (without --resume), or pass --force to continue this run with the recipe as it is "
                "now (the run keeps the data it prepared)."
            )
        console.print(f"[yellow]--force: continuing {self.root} with the recipe as it is now, although:{listed}\n"
                      "The run keeps the data it prepared.", highlight=False)
        self.write_recipe(recipe)
        self.write_fingerprint(recipe, [*stored.get("accepted", []), *found])

    def require_model(self) -> None:
        if not self.model.is_dir():
            raise DomaintuneError(f"{self.root}: no trained model in {self.model.name}/ (run `domaintune train` first)")
        if not any(self.model.glob("*.safetensors")):  # every method's artefact holds its weights as safetensors
            raise DomaintuneError(f"{self.model}: no weights (*.safetensors) in it; the training did not finish "
                                  f"saving (run `domaintune train {self.root} --resume`)")

    @classmethod
    def create(cls, recipe: Recipe) -> "RunDir":
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        root = Path(recipe.output_dir) / f"{recipe.name}-{stamp}"
        suffix = 1
        while root.exists():
            suffix += 1
            root = Path(recipe.output_dir) / f"{recipe.name}-{stamp}-{suffix}"
        root.mkdir(parents=True)
        run = cls(root.resolve())
        run.write_recipe(recipe)
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        run = cls(Path(path).resolve())
        if not run.recipe_file.exists():
            raise DomaintuneError(f"{path}: not a run directory (no recipe.yaml)")
        return run

    @classmethod
    def latest(cls, recipe: Recipe) -> "RunDir":
        """The most recent run of this recipe, for --resume; else the most recent of its name (which
        check_resume then refuses, saying what differs)."""
        parent = Path(recipe.output_dir)
        pattern = re.compile(rf"^{re.escape(recipe.name)}-(\d{{8}}-\d{{6}})(?:-(\d+))?$")
        # Ordered by the time in the name, when the run was made: a folder's mtime moves when an older run is
        # evaluated or exported, which would make it "the latest".
        made = {path: (match.group(1), int(match.group(2) or 1)) for path in parent.glob(f"{recipe.name}-*")
                if (match := pattern.match(path.name)) and (path / "recipe.yaml").exists()}
        candidates = sorted(made, key=made.get)
        if not candidates:
            raise DomaintuneError(f"--resume: no earlier run named '{recipe.name}' in {parent}/")
        runs = [cls(path.resolve()) for path in reversed(candidates)]
        wanted = recipe_hash(recipe)
        return next((run for run in runs if run.recipe_hash() == wanted), runs[0])
