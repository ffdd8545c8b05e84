"""API keys (hashed in memory, compared in constant time), model scopes and per-key rate limits.

Keys come from DOMAINTUNE_API_KEYS (comma-separated `KEY` or `ID:KEY`: every model, no admin) or a keys
file (YAML or JSON). A keys file fails closed: each entry names its models, and anything missing,
misspelt or of the wrong type stops the server at start-up with the entry's line (YAML) or number (JSON):

    keys:
      - id: team-a
        key: sk-...            # or sha256: <hex digest of the key>, so the file holds no secret
        models: [base, legal]  # required: the models this key may use; ["*"] for every model
        admin: true            # optional (default false): may read /metrics, which shows every tenant's traffic
        requests_per_minute: 60      # each prompt of a /v1/completions list counts as one request
        tokens_per_minute: 20000     # prompt + max_tokens reserved at admission, settled to the real count

Without any key (a loopback-only server), every caller is an admin.
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


@dataclass(eq=False)  # settled by identity
class Spend:
    """Tokens counted against a key's budget from `time`: a reservation until its request settles it."""

    time: float
    tokens: int


@dataclass
class ApiKey:
    id: str
    digest: str  # sha256 hex of the key; the key itself is never kept
    models: frozenset[str] | None = None  # None: every model
    admin: bool = False
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    requests: deque = field(default_factory=deque)  # times of recent requests
    tokens: deque = field(default_factory=deque)  # Spend of recent requests

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


ALL_MODELS = "*"
FIELDS = ("id", "key", "sha256", "models", "admin", "requests_per_minute", "tokens_per_minute")
ANONYMOUS = ApiKey(id="anonymous", digest="", admin=True)  # no keys at all: loopback only, see settings


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _positive(entry: dict, name: str, where: str) -> int | None:
    value = entry.get(name)
    if value is not None and (not isinstance(value, int) or value < 1):
        raise DomaintuneError(f"{where}: {name} must be a positive whole number, got {value!r}")
    return value


def _models(entry: dict, where: str) -> frozenset[str] | None:
    models = entry.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(name, str) and name for name in models):
        raise DomaintuneError(f"{where}: models must be a non-empty list of model names, or [\"{ALL_MODELS}\"] for every "
                              f"model; got {models!r}")
    if ALL_MODELS in models:
        if len(models) > 1:
            raise DomaintuneError(f"{where}: models: [\"{ALL_MODELS}\"] means every model; list it alone, got {models!r}")
        return None
    return frozenset(models)


def _from_entry(entry: dict, where: str) -> ApiKey:
    if not isinstance(entry, dict) or not entry.get("id"):
        raise DomaintuneError(f"{where}: each key needs an id")
    where = f"{where} (key {entry['id']!r})"
    unknown = sorted(str(name) for name in entry if name not in FIELDS)
    if unknown:
        raise DomaintuneError(f"{where}: unknown field {unknown[0]!r}; a key has {', '.join(FIELDS)}")
    if bool(entry.get("key")) == bool(entry.get("sha256")):
        raise DomaintuneError(f"{where}: needs exactly one of key or sha256")
    digest = _digest(str(entry["key"])) if entry.get("key") else str(entry["sha256"]).lower()
    if len(digest) != 64 or any(char not in "0123456789abcdef" for char in digest):
        raise DomaintuneError(f"{where}: sha256 must be 64 hex digits")
    admin = entry.get("admin", False)
    if not isinstance(admin, bool):
        raise DomaintuneError(f"{where}: admin must be true or false, got {admin!r}")
    return ApiKey(
        id=str(entry["id"]),
        digest=digest,
        models=_models(entry, where),
        admin=admin,
        requests_per_minute=_positive(entry, "requests_per_minute", where),
        tokens_per_minute=_positive(entry, "tokens_per_minute", where),
    )


def _entry_places(path: Path, text: str, count: int) -> list[str]:
    """Where each entry is, for messages: its line in a YAML file, its number in a JSON one."""
    if path.suffix != ".json":
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if isinstance(node, yaml.MappingNode):
            node = next((value for key, value in node.value if key.value == "keys"), None)
        if isinstance(node, yaml.SequenceNode) and len(node.value) == count:
            return [f"line {item.start_mark.line + 1}" for item in node.value]
    return [f"entry {index + 1}" for index in range(count)]


def load_keys(keys_file: str | Path | None = None, environ: dict | None = None) -> list[ApiKey]:
    """The keys from the keys file and the DOMAINTUNE_API_KEYS variable (both may be given)."""
    environ = os.environ if environ is None else environ
    keys: list[ApiKey] = []
    if keys_file:
        path = Path(keys_file)
        if not path.exists():
            raise DomaintuneError(f"--keys-file: {path} does not exist")
        text = path.read_text(encoding="utf-8")
        try:
            data = (json.loads if path.suffix == ".json" else yaml.safe_load)(text)
        except (ValueError, yaml.YAMLError) as error:
            raise DomaintuneError(f"--keys-file: {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                                  f"{str(error).splitlines()[0]}") from None
        entries = data.get("keys") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise DomaintuneError(f"--keys-file: {path} must hold a list of keys (under `keys:`)")
        places = _entry_places(path, text, len(entries))
        keys += [_from_entry(entry, f"--keys-file {path} {place}") for entry, place in zip(entries, places)]
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

    def admit(self, key: ApiKey, requests: int = 1, now: float | None = None) -> None:
        """Count `requests` against the key's limits, or refuse them with 429 and Retry-After."""
        if key.requests_per_minute and requests > key.requests_per_minute:
            raise ApiError(400, f"prompt: {requests} prompts count as {requests} requests, over this key's limit of "
                                f"{key.requests_per_minute} requests per minute.", param="prompt", code="requests_per_minute_exceeded")
        now = time.monotonic() if now is None else now
        with self.lock:
            self._expire(key, now)
            if key.requests_per_minute and len(key.requests) + requests > key.requests_per_minute:
                self._refuse(key.requests[0] if key.requests else now, now, f"{key.requests_per_minute} requests per minute")
            if key.tokens_per_minute and self._used(key) >= key.tokens_per_minute:
                self._refuse(key.tokens[0].time, now, f"{key.tokens_per_minute} tokens per minute")
            key.requests.extend([now] * requests)

    def reserve(self, key: ApiKey, tokens: int, now: float | None = None) -> Spend | None:
        """Hold the most a request can use (prompt + max_tokens) against the key's token budget, so that
        concurrent requests can't all pass it; `settle` replaces it with what was used."""
        if not key.tokens_per_minute:
            return None
        if tokens > key.tokens_per_minute:
            raise ApiError(400, f"max_tokens: the prompt and max_tokens come to {tokens} tokens, over this key's limit of "
                                f"{key.tokens_per_minute} tokens per minute; ask for fewer max_tokens.",
                           param="max_tokens", code="tokens_per_minute_exceeded")
        now = time.monotonic() if now is None else now
        with self.lock:
            self._expire(key, now)
            if self._used(key) + tokens > key.tokens_per_minute:
                self._refuse(key.tokens[0].time if key.tokens else now, now, f"{key.tokens_per_minute} tokens per minute")
            reservation = Spend(now, tokens)
            key.tokens.append(reservation)
            return reservation

    def settle(self, reservation: Spend, tokens: int) -> None:
        with self.lock:
            reservation.tokens = tokens

    def spend(self, key: ApiKey, tokens: int, now: float | None = None) -> None:
        if key.tokens_per_minute and tokens:
            with self.lock:
                key.tokens.append(Spend(time.monotonic() if now is None else now, tokens))

    @staticmethod
    def _expire(key: ApiKey, now: float) -> None:
        while key.requests and key.requests[0] <= now - WINDOW:
            key.requests.popleft()
        while key.tokens and key.tokens[0].time <= now - WINDOW:
            key.tokens.popleft()

    @staticmethod
    def _used(key: ApiKey) -> int:
        return sum(spend.tokens for spend in key.tokens)

    @staticmethod
    def _refuse(oldest: float, now: float, limit: str) -> None:
        retry = max(1, math.ceil(oldest + WINDOW - now))
        raise ApiError(429, f"Rate limit reached for this key ({limit}); retry in {retry} s.",
                       code="rate_limit_exceeded", headers={"Retry-After": str(retry)})


def check_scope(key: ApiKey, model: str) -> None:
    if not key.allows(model):
        raise ApiError(403, f"This API key may not use the model '{model}'.", param="model", code="model_not_allowed")
