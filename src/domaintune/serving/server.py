"""Start the built-in server with uvicorn, after the security checks."""
from __future__ import annotations

import logging
import sys

from domaintune.config import TrainingConfig
from domaintune.config.runtime import thread_count
from domaintune.serving.app import create_app
from domaintune.serving.auth import KeyStore, load_keys
from domaintune.serving.settings import ServeSettings, require_keys_off_loopback
from domaintune.serving.sources import Served


def build_app(served: Served, settings: ServeSettings):
    keys = KeyStore(load_keys(settings.keys_file))
    require_keys_off_loopback(settings.host, keys.required)
    return create_app(served, settings, keys)


def audit_to_stderr() -> None:
    """One JSON line per request on stderr, nothing else in them."""
    logger = logging.getLogger("domaintune.audit")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def run_server(served: Served, settings: ServeSettings, console=None) -> None:
    import torch
    import uvicorn

    # As in training: a torch thread waiting on a core other work keeps busy stalls every matmul.
    torch.set_num_threads(thread_count(TrainingConfig(threads=settings.threads)))
    app = build_app(served, settings)
    audit_to_stderr()
    if console is not None:
        state = app.state.domaintune
        engine = f" (text generation on {state.generator.engine['engine']}, {state.generator.engine['compute_type']})" \
            if state.generator else ""
        console.print(f"Serving {', '.join(state.names())} on http://{settings.host}:{settings.port}/v1{engine}",
                      highlight=False)
    # uvicorn's access log would duplicate the audit line (and show query strings); the audit log replaces it.
    # Its concurrency limit counts idle keep-alive connections too and answers in plain text: it is only a
    # backstop above the app's own limit (middleware.ConcurrencyLimit).
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, log_level="warning",
                limit_concurrency=2 * settings.max_concurrent, timeout_keep_alive=30)
