"""Layer 2, the recipe: one pydantic model composed of one module per section, validated before
anything runs. Nothing here knows the engines or the objectives' code.

- base.py: what every section shares; data.py, training.py (+ distributed), evaluation.py (+ export),
  methods.py (the union of the methods' own Configs), objectives.py (every objective's Config),
  workflows.py (tune, compare, stages); recipe.py composes them and reads YAML.
- runtime.py: facts about this machine (threads, bf16) that every layer above decides by.
"""
from domaintune.config.data import (
    AugmentConfig,
    ContaminationConfig,
    DataConfig,
    DocumentsConfig,
    NearDedupConfig,
    PiiConfig,
    QualityConfig,
    SplitConfig,
    SynthesizeConfig,
)
from domaintune.config.evaluation import EvaluationConfig, ExportConfig, JudgeConfig
from domaintune.config.recipe import (
    ModelConfig,
    Recipe,
    apply_overrides,
    format_validation_error,
    load_recipe,
    recipe_json_schema,
    validate_recipe,
)
from domaintune.config.training import DistributedConfig, EarlyStoppingConfig, TrainingConfig

__all__ = [
    "AugmentConfig", "ContaminationConfig", "DataConfig", "DistributedConfig", "DocumentsConfig", "EarlyStoppingConfig",
    "EvaluationConfig", "ExportConfig", "JudgeConfig", "ModelConfig", "NearDedupConfig", "PiiConfig", "QualityConfig",
    "Recipe", "SplitConfig", "SynthesizeConfig", "TrainingConfig", "apply_overrides", "format_validation_error",
    "load_recipe", "recipe_json_schema", "validate_recipe",
]
