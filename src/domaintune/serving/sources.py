"""What a `serve` command line names, resolved to folders: one causal LM (the base for adapters),
its adapters, and any embedding or classification models."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from domaintune.core.errors import DomaintuneError
from domaintune.models.loading import PEFT_ADAPTER_FILES, is_adapter_folder
from domaintune.models.registry import resolve_model_path
from domaintune.storage.rundir import RunDir


@dataclass
class Served:
    """Served names -> local folders (or hub ids), by kind."""

    chat: tuple[str, str] | None = None  # (name, path) of the causal LM
    adapters: dict[str, str] = field(default_factory=dict)
    embeddings: dict[str, str] = field(default_factory=dict)
    classifiers: dict[str, str] = field(default_factory=dict)

    def names(self) -> list[str]:
        chat = [self.chat[0]] if self.chat else []
        return [*chat, *self.adapters, *self.embeddings, *self.classifiers]


def model_kind(path: str) -> str:
    """causal-lm, classifier or embedding, from the folder's config (sentence-transformers folders are embeddings)."""
    folder = Path(path)
    if (folder / "modules.json").exists():
        return "embedding"
    config_file = folder / "config.json"
    architectures = json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or [] if config_file.exists() else []
    name = architectures[0] if architectures else ""
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    if name.endswith(("ForSequenceClassification", "ForTokenClassification")):
        return "classifier"
    return "embedding"


def _split_named(spec: str, option: str) -> tuple[str | None, str]:
    name, sep, path = spec.partition("=")
    if not sep:
        return None, spec
    if not name or not path:
        raise DomaintuneError(f"{option}: expected NAME=PATH, got {spec!r}")
    return name, path


def _adapter_base(adapter_dir: Path) -> str:
    config = json.loads((adapter_dir / PEFT_ADAPTER_FILES[0]).read_text(encoding="utf-8"))
    return config.get("base_model_name_or_path") or ""


def _from_run(run_dir: Path, served: Served, name: str | None) -> None:
    """What a run exported, by kind: a merged causal LM, a classifier (task head, reward model) or a
    sentence encoder; else the peft adapter on its base model."""
    run = RunDir.open(run_dir)
    recipe = run.recipe()
    name = name or recipe.name
    exported = next((folder for folder in (run.export / "merged", run.export / "embedding") if folder.exists()), None)
    if exported is not None:
        _add(served, name, str(exported))
    elif is_adapter_folder(run.model) and (run.model / PEFT_ADAPTER_FILES[0]).exists():
        _set_chat(served, _default_name(recipe.model.name), resolve_model_path(recipe.model.name))
        served.adapters[name] = str(run.model)
    elif run.model.exists() and (run.model / "config.json").exists():
        _add(served, name, str(run.model))
    else:
        raise DomaintuneError(f"model: run directory {run_dir} has no servable model (no export/merged, no peft adapter in model/); "
                              "train it, or `domaintune export` it first")


def _add(served: Served, name: str, path: str) -> None:
    kind = model_kind(path)
    if kind == "causal-lm":
        _set_chat(served, name, path)
    elif kind == "classifier":
        served.classifiers[name] = path
    else:
        served.embeddings[name] = path


def _default_name(where: str) -> str:
    """A bundled name or hub id as given; a folder by its own name, not its whole path."""
    folder = Path(where).expanduser()
    return folder.name if folder.exists() else where


def _set_chat(served: Served, name: str, path: str) -> None:
    if served.chat and served.chat[1] != path:
        raise DomaintuneError(f"model: one causal LM per server (got {served.chat[0]} and {name}); "
                              "serve fine-tunes of one base as --adapter NAME=PATH")
    served.chat = (name, path)


def resolve_sources(models: list[str], adapters: list[str] | None = None, adapters_dir: str | None = None) -> Served:
    """`models`: [NAME=]PATH_OR_NAME each: a run directory, a model folder (causal LM, classifier or
    sentence encoder), a bundled name or a hub id. The causal LM is the base that adapters go on."""
    served = Served()
    for spec in models:
        name, where = _split_named(spec, "model")
        folder = Path(where).expanduser()
        if (folder / "recipe.yaml").exists():
            _from_run(folder, served, name)
            continue
        if (folder / PEFT_ADAPTER_FILES[0]).exists():
            base = _adapter_base(folder)
            _set_chat(served, _default_name(base), resolve_model_path(base))
            served.adapters[name or folder.name] = str(folder.resolve())
            continue
        _add(served, name or _default_name(where), resolve_model_path(where))
    for spec in adapters or []:
        name, where = _split_named(spec, "--adapter")
        folder = Path(where).expanduser()
        served.adapters[name or folder.name] = _adapter_folder(folder, "--adapter")
    if adapters_dir:
        root = Path(adapters_dir).expanduser()
        if not root.is_dir():
            raise DomaintuneError(f"--adapters-dir: {root} is not a folder")
        for folder in sorted(root.iterdir()):
            if (folder / PEFT_ADAPTER_FILES[0]).exists():
                served.adapters.setdefault(folder.name, str(folder.resolve()))
    if served.adapters and not served.chat:
        raise DomaintuneError("model: adapters need a base model; name it (a bundled name, folder or hub id) before --adapter")
    if not served.names():
        raise DomaintuneError("model: nothing to serve; name a run directory, a model folder or a bundled model")
    names = served.names()
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DomaintuneError(f"model: the served name {duplicates[0]!r} is used twice; name them with NAME=PATH")
    return served


def _adapter_folder(folder: Path, option: str) -> str:
    if not (folder / PEFT_ADAPTER_FILES[0]).exists():
        raise DomaintuneError(f"{option}: {folder} is not a peft adapter folder (no {PEFT_ADAPTER_FILES[0]})")
    return str(folder.resolve())
