"""domaintune: turn a small pretrained language model into a domain expert.

The export verb is `export_model`: `domaintune.export` is the export subpackage.
"""
from domaintune.api import (
    check_recipe,
    compare,
    estimate,
    evaluate,
    export_feedback,
    export_model,
    feedback,
    init,
    list_methods,
    list_models,
    load,
    prepare_data,
    quickstart,
    recipe_schema,
    run,
    select,
    serve,
    synthesize,
    train,
    tune,
)
from domaintune.core.errors import DomaintuneError

__all__ = [
    "DomaintuneError",
    "check_recipe",
    "init",
    "compare",
    "estimate",
    "evaluate",
    "export_feedback",
    "export_model",
    "feedback",
    "list_methods",
    "list_models",
    "load",
    "prepare_data",
    "quickstart",
    "recipe_schema",
    "run",
    "select",
    "serve",
    "synthesize",
    "train",
    "tune",
]
__version__ = "0.1.0"
