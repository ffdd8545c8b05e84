"""API keys (hashed in memory, compared in constant time), model scopes and per-key rate limits.

Keys come from DOMAINTUNE_API_KEYS (comma-separated `KEY` or `ID:KEY`) or a keys file (YAML or JSON):

    keys:
      - id: team-a
        key: sk-...            # or sha256: <hex digest of the key>, so the file holds no secret
        models: [base, legal]  # optional: the models this key may use (default: all)
        requests_per_minute: 60
        tokens_per_minute: 20000
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from domaintune.core.errors import DomaintuneError
from domaintune.serving.errors import ApiError

KEYS_ENV = "DOMAINTUNE_API_KEYS"
WINDOW = 60.0


@dataclass
class ApiKey:
    id: str
    digest: str  # sha256 hex of the key; the key itself is never kept
    models: frozenset[str] | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    requests: deque = field(default_factory=deque)  # times of recent requests
    tokens: deque = field(default_factory=deque)  # (time, tokens) of recent requests

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


ANONYMOUS = ApiKey(id="anonymous", digest="")


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _positive(entry: dict, name: str, where: str) -> int | None:
    value = entry.get(name)
    if value is not None and (not isinstance(value, int) or value < 1):
        raise DomaintuneError(f"{where}: {name} must be a positive whole number, got {value!r}")
    return value


def _from_entry(entry: dict, where: str) -> ApiKey:
    if not isinstance(entry, dict) or not entry.get("id"):
        raise DomaintuneError(f"{where}: each key needs an id")
    if bool(entry.get("key")) == bool(entry.get("sha256")):
        raise DomaintuneError(f"{where}: key {entry['id']!r} needs exactly one of key or sha256")
    digest = _digest(str(entry["key"])) if entry.get("key") else str(entry["sha256"]).lower()
    if len(digest) != 64 or any(char not in "0123456789abcdef" for char in digest):
        raise DomaintuneError(f"{where}: key {entry['id']!r}: sha256 must be 64 hex digits")
    models = entry.get("models")
    return ApiKey(
        id=str(entry["id"]),
        digest=digest,
        models=frozenset(models) if models else None,
        requests_per_minute=_positive(entry, "requests_per_minute", where),
        tokens_per_minute=_positive(entry, "tokens_per_minute", where),
    )


def load_keys(keys_file: str | Path | None = None, environ: dict | None = None) -> list[ApiKey]:
    """The keys from the keys file and the DOMAINTUNE_API_KEYS variable (both may be given)."""
    environ = os.environ if environ is None else environ
    keys: list[ApiKey] = []
    if keys_file:
        path = Path(keys_file)
        if not path.exists():
            raise DomaintuneError(f"--keys-file: {path} does not exist")
        try:
            data = (json.loads if path.suffix == ".json" else yaml.safe_load)(path.read_text(encoding="utf-8"))
        except (ValueError, yaml.YAMLError) as error:
            raise DomaintuneError(f"--keys-file: {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                                  f"{str(error).splitlines()[0]}") from None
        entries = data.get("keys") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise DomaintuneError(f"--keys-file: {path} must hold a list of keys (under `keys:`)")
        keys += [_from_entry(entry, f"--keys-file {path}") for entry in entries]
    for position, item in enumerate(filter(None, (part.strip() for part in environ.get(KEYS_ENV, "").split(",")))):
        key_id, sep, key = item.partition(":")
        keys.append(ApiKey(id=key_id if sep else f"env-{position}", digest=_digest(key if sep else item)))
    ids = [key.id for key in keys]
    if len(set(ids)) != len(ids):
        raise DomaintuneError(f"--keys-file: key id {next(i for i in ids if ids.count(i) > 1)!r} is used twice")
    return keys


class KeyStore:
    def __init__(self, keys: list[ApiKey]):
        self.keys = keys
        self.lock = threading.Lock()

    @property
    def required(self) -> bool:
        return bool(self.keys)

    def authenticate(self, authorization: str | None) -> ApiKey:
        """The key behind an `Authorization: Bearer KEY` header; 401 without a valid one."""
        if not self.keys:
            return ANONYMOUS
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise ApiError(401, "Missing API key: send it as `Authorization: Bearer KEY`.", code="missing_api_key")
        digest = _digest(presented.strip())
        found = None
        for key in self.keys:  # no early exit: the time taken does not depend on which key matched
            if hmac.compare_digest(key.digest, digest):
                found = key
        if found is None:
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        return found

    def admit(self, key: ApiKey, now: float | None = None) -> None:
        """Count a request against the key's limits, or refuse it with 429 and Retry-After."""
        now = time.monotonic() if now is None else now
        with self.lock:
            while key.requests and key.requests[0] <= now - WINDOW:
                key.requests.popleft()
            while key.tokens and key.tokens[0][0] <= now - WINDOW:
                key.tokens.popleft()
            if key.requests_per_minute and len(key.requests) >= key.requests_per_minute:
                self._refuse(key.requests[0], now, f"{key.requests_per_minute} requests per minute")
            if key.tokens_per_minute and sum(count for _, count in key.tokens) >= key.tokens_per_minute:
                self._refuse(key.tokens[0][0], now, f"{key.tokens_per_minute} tokens per minute")
            key.requests.append(now)

    def spend(self, key: ApiKey, tokens: int, now: float | None = None) -> None:
        if key.tokens_per_minute and tokens:
            with self.lock:
                key.tokens.append((time.monotonic() if now is None else now, tokens))

    @staticmethod
    def _refuse(oldest: float, now: float, limit: str) -> None:
        retry = max(1, math.ceil(oldest + WINDOW - now))
        raise ApiError(429, f"Rate limit reached for this key ({limit}); retry in {retry} s.",
                       code="rate_limit_exceeded", headers={"Retry-After": str(retry)})


def check_scope(key: ApiKey, model: str) -> None:
    if not key.allows(model):
        raise ApiError(403, f"This API key may not use the model '{model}'.", param="model", code="model_not_allowed")
