"""The recipe as one model: the sections composed, validated before anything runs, read from YAML with
`--set` overrides, and its data paths made absolute against the recipe's folder. A curriculum's
stages are checked here too: each, merged into the recipe, must be a valid recipe itself."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Union

import yaml
from pydantic import Field, ValidationError, model_validator

from domaintune.config.base import Section
from domaintune.config.data import DataConfig
from domaintune.config.evaluation import EvaluationConfig, ExportConfig
from domaintune.config.inference import InferenceConfig
from domaintune.config.methods import MethodConfig
from domaintune.config.objectives import OBJECTIVE_CONFIGS, ObjectiveConfig, objective_names
from domaintune.config.training import DistributedConfig, TrainingConfig
from domaintune.config.workflows import SEARCH_PARAM_TYPES, CompareConfig, StageConfig, TuneConfig
from domaintune.core.errors import DomaintuneError
from domaintune.methods import get_method, method_config_types


class ModelConfig(Section):
    name: str = Field("smollm2-135m-instruct", description="Registry name, local Hugging Face folder, or hub id.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for hub ids.")
    trust_remote_code: bool = Field(False, description="Run model code shipped with a hub repo. Off by default.")


class Recipe(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9_.-]+$", description="Run name; runs go to <output_dir>/<name>-<time>.")
    output_dir: str = Field("runs", description="Folder that holds run directories.")
    seed: int = 42
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=lambda: method_config_types()[0]())
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    objective: ObjectiveConfig = Field(
        default_factory=OBJECTIVE_CONFIGS[0], description="What is learned (`domaintune methods` lists the objectives)."
    )
    tune: TuneConfig | None = Field(None, description="Hyper-parameter search (`domaintune tune`).")
    compare: CompareConfig | None = Field(None, description="Methods compared by `domaintune compare`.")
    stages: list[StageConfig] | None = Field(
        None, min_length=2, description="A curriculum: `domaintune run` trains these in order, each from the previous one's weights."
    )
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)

    @model_validator(mode="after")
    def _stages_are_recipes(self) -> "Recipe":
        if self.stages:
            stage_recipes(self)  # each stage, merged into this recipe, must be a valid recipe itself
        return self

    @model_validator(mode="after")
    def _method_fits_objective(self) -> "Recipe":
        # A task head exists only for classify; classify and the embedding objectives train their own way.
        objectives = getattr(get_method(self.method.name), "OBJECTIVES", None)
        if objectives and self.objective.name not in objectives:
            raise ValueError(f"method {self.method.name} works with objective {' or '.join(objectives)} only")
        methods = type(self.objective).methods
        if methods and self.method.name not in methods:
            raise ValueError(f"objective {self.objective.name} trains with method {' or '.join(methods)} "
                             f"(set method.name), not {self.method.name}")
        return self

    @model_validator(mode="after")
    def _one_precision(self) -> "Recipe":
        # The launched processes and the Trainer inside them must agree; an explicit contradiction is a mistake.
        wanted = {"no": "fp32", "bf16": "bf16"}.get(self.distributed.mixed_precision)
        if wanted and self.training.precision not in ("auto", wanted):
            raise ValueError(
                f"distributed.mixed_precision {self.distributed.mixed_precision!r} contradicts "
                f"training.precision {self.training.precision!r}"
            )
        return self


def format_validation_error(error: ValidationError) -> str:
    """One line per problem: `training.lr: input should be a number`."""
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"] if not _is_union_tag(part))
        message = item["msg"]
        message = message[0].lower() + message[1:] if message else message
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{path or '<recipe>'}: {message}")
    return "\n".join(lines)


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the discriminator value (e.g. 'lora', 'float') into the location of union members.
    tags = {cls.model_fields["name"].default for cls in method_config_types()}
    tags |= {name for cls in OBJECTIVE_CONFIGS for name in objective_names(cls)}
    tags |= {cls.model_fields["type"].default for cls in SEARCH_PARAM_TYPES}
    return isinstance(part, str) and part in tags


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides; values are parsed as YAML so `2`, `true`, `[a, b]` get their types.
    A number picks an item of a list: `stages.0.training.max_steps=10`."""
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            raise DomaintuneError(f"--set {override!r}: expected KEY=VALUE, e.g. training.epochs=2")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise DomaintuneError(f"--set {override!r}: {part} is not an item number below {len(node)}")
                node = node[int(part)]
                continue
            child = node.setdefault(part, {})
            if not isinstance(child, (dict, list)):
                raise DomaintuneError(f"--set {override!r}: {part} is not a section")
            node = child
        if not isinstance(node, dict):
            raise DomaintuneError(f"--set {override!r}: {parts[-2]} is a list; name one of its items by number")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return data


def validate_recipe(data: dict, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        raise DomaintuneError(f"{source} is not a valid recipe:\n{format_validation_error(error)}") from None


RecipeLike = Union["Recipe", str, Path, dict]


def as_recipe(recipe: RecipeLike, overrides: list[str] | None = None) -> Recipe:
    """A validated Recipe from a YAML path, a dict, or a Recipe (overrides as `a.b=value`)."""
    if isinstance(recipe, Recipe):
        if not overrides:
            return recipe
        recipe = recipe.model_dump(mode="json")
    if isinstance(recipe, dict):
        # A deep copy: overrides set nested keys, which must not change the caller's dict.
        return validate_recipe(apply_overrides(copy.deepcopy(recipe), overrides or []))
    return load_recipe(recipe, overrides)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply CLI overrides, validate. Relative data paths resolve against the recipe's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DomaintuneError(f"{path}: recipe file not found") from None
    except UnicodeDecodeError:
        raise DomaintuneError(f"{path}: recipe is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise DomaintuneError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if not isinstance(data, dict):
        raise DomaintuneError(f"{path}: a recipe is a mapping of sections (model, data, method, ...)")
    data = apply_overrides(data, overrides or [])
    recipe = validate_recipe(data, source=str(path))
    return resolve_data_paths(recipe, path.parent)


def resolve_data_paths(recipe: Recipe, base: Path, resolve_file: Callable[[str, str], str] | None = None) -> Recipe:
    """Every file the recipe reads data from, made absolute against `base` (the recipe's folder), or replaced by
    `resolve_file(field, path)` where given (the workbench confines each to its runs folder)."""
    def against_base(field: str, path: str) -> str:
        return path if Path(path).is_absolute() else str((base / path).resolve())

    resolve_one = resolve_file or against_base

    def resolve(field: str, files: list[str]) -> list[str]:
        return [resolve_one(f"{field}.{index}", file) for index, file in enumerate(files)]

    for part in ("train", "validation", "test"):
        setattr(recipe.data, part, resolve(f"data.{part}", getattr(recipe.data, part)))
    for number, stage in enumerate(recipe.stages or []):
        for part in ("train", "validation", "test"):
            if isinstance(stage.data.get(part), list):
                stage.data[part] = resolve(f"stages.{number}.data.{part}", stage.data[part])
    recipe.data.contamination.benchmarks = resolve("data.contamination.benchmarks", recipe.data.contamination.benchmarks)
    recipe.data.synthesize.documents = resolve("data.synthesize.documents", recipe.data.synthesize.documents)
    if recipe.evaluation.probes:
        recipe.evaluation.probes = resolve_one("evaluation.probes", recipe.evaluation.probes)
    recipe.evaluation.harness_files = resolve("evaluation.harness_files", recipe.evaluation.harness_files)
    if hasattr(recipe.objective, "resolve_paths"):  # multitask: each task's files
        recipe.objective.resolve_paths(resolve)
    return recipe


def recipe_json_schema() -> dict:
    return Recipe.model_json_schema()


STAGE_SECTIONS = ("data", "objective", "method", "training", "evaluation")


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("method", "objective"):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)  # a method or objective block replaces the recipe's whole block
    return out


def stage_recipes(recipe: Recipe) -> list[dict]:
    """The resolved recipe of each stage (as dicts; model.name is filled in while running)."""
    base = recipe.model_dump(mode="json", exclude={"stages", "compare", "tune"})
    stages = []
    for index, stage in enumerate(recipe.stages):
        # A stage's objective or method of None is the recipe's: a recipe written back whole (run.yaml) sets them so.
        changes = stage.model_dump(mode="json", exclude_unset=True)
        data = merge(base, {key: value for key, value in changes.items() if key in STAGE_SECTIONS and value is not None})
        data["name"] = f"{recipe.name}-{stage.label or f'stage{index + 1}'}"
        last = index == len(recipe.stages) - 1
        if not last:
            data.setdefault("export", {}).update(merged=True, dtype="float32")
        checked = validate_recipe(data, source=f"stages[{index}]")
        if not last and not getattr(get_method(checked.method.name), "MERGEABLE", True):
            raise DomaintuneError(
                f"stages[{index}].method: {checked.method.name} can't be merged into the weights, so the next "
                "stage could not start from them; use it in the last stage only"
            )
        stages.append(data)
    return stages
