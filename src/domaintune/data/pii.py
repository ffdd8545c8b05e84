"""PII and secrets: find them, then redact with typed placeholders, drop the row, or only count.

Each detector finds candidates with a pattern and keeps only those that validate, so that
look-alikes survive: a card number must pass the Luhn check, an IBAN its mod-97 checksum
(python-stdnum), a US SSN the SSA's rules, a phone number Google's numbering plan
(phonenumbers), an IP address the `ipaddress` parser. API keys and tokens are the provider
patterns maintained by detect-secrets. Names and street addresses are not detected: no
library that installs offline finds them in free text reliably (see the README).
"""
from __future__ import annotations

import ipaddress
import re
from collections import Counter
from functools import cache
from typing import Callable, Iterator, NamedTuple

from domaintune.config import PiiConfig
from domaintune.data.cleaning import Removed

PLACEHOLDERS = {
    "email": "[EMAIL]",
    "phone": "[PHONE]",
    "credit_card": "[CREDIT_CARD]",
    "iban": "[IBAN]",
    "ssn": "[SSN]",
    "ip_address": "[IP_ADDRESS]",
    "url_credentials": "[CREDENTIALS]",
    "secret": "[SECRET]",
}


class Finding(NamedTuple):
    kind: str
    start: int
    end: int


_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# 13-19 digits, optionally grouped by single spaces or dashes, not inside a longer number.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_SSN = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# scheme://user:password@host: only the user:password part is secret.
_URL_CREDENTIALS = re.compile(r"(?<=://)[^\s:/?#@]+:[^\s/?#@]+(?=@)")
# Current key formats that detect-secrets 1.5 predates or covers only in old forms.
_EXTRA_SECRETS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL),  # the whole block
    re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{32,}"),  # OpenAI / Anthropic
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),  # Google API key
    re.compile(r"\bhf_[A-Za-z]{34}\b"),  # Hugging Face
    re.compile(r"\bBearer [A-Za-z0-9._~+/-]{20,}=*"),
]
# detect-secrets plugins whose patterns match ordinary words or are covered above.
_SKIPPED_PLUGINS = {"ArtifactoryDetector", "BasicAuthDetector", "IPPublicDetector"}


def _emails(text: str) -> Iterator[tuple[int, int]]:
    for match in _EMAIL.finditer(text):
        yield match.span()


def _cards(text: str) -> Iterator[tuple[int, int]]:
    from stdnum import luhn

    for match in _CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        # Issued card numbers start with 2-6 (Mastercard, Visa, Amex, Discover, ...); an order
        # number that happens to pass Luhn (1 in 10 do) rarely also has a card's first digit and length.
        if digits[0] in "23456" and luhn.is_valid(digits):
            yield match.span()


def _ibans(text: str) -> Iterator[tuple[int, int]]:
    from stdnum import iban

    for match in _IBAN.finditer(text):
        if iban.is_valid(match.group()):
            yield match.span()


def _ssns(text: str) -> Iterator[tuple[int, int]]:
    from stdnum.us import ssn

    for match in _SSN.finditer(text):
        if ssn.is_valid(match.group()):
            yield match.span()


def _ips(text: str) -> Iterator[tuple[int, int]]:
    for pattern in (_IPV4, _IPV6):
        for match in pattern.finditer(text):
            try:
                ipaddress.ip_address(match.group())
            except ValueError:
                continue  # a version number like 1.2.3.400, or a time like 12:30:45
            yield match.span()


def _url_credentials(text: str) -> Iterator[tuple[int, int]]:
    for match in _URL_CREDENTIALS.finditer(text):
        yield match.span()


def _secret_patterns() -> list[re.Pattern]:
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.plugins.base import RegexBasedDetector

    plugins = get_mapping_from_secret_type_to_class().values()
    patterns = [
        pattern
        for plugin in plugins
        if issubclass(plugin, RegexBasedDetector) and plugin.__name__ not in _SKIPPED_PLUGINS
        for pattern in plugin.denylist
    ]
    return _EXTRA_SECRETS + patterns  # first match wins: the whole PEM block before its BEGIN line


def _phones(region: str) -> Callable[[str], Iterator[tuple[int, int]]]:
    import phonenumbers

    def find(text: str) -> Iterator[tuple[int, int]]:
        # VALID: the number must exist in the region's numbering plan, not merely look like one.
        for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            yield match.start, match.end

    return find


class PiiScanner:
    """Finds the configured PII types in text and redacts them."""

    def __init__(self, config: PiiConfig):
        secrets = _secret_patterns() if "secret" in config.types else []
        detectors: dict[str, Callable[[str], Iterator[tuple[int, int]]]] = {
            # Order matters where spans overlap: the earlier, more specific detector wins.
            "url_credentials": _url_credentials,
            "secret": lambda text: (m.span() for p in secrets for m in p.finditer(text)),
            "email": _emails,
            "iban": _ibans,
            "credit_card": _cards,
            "ssn": _ssns,
            "ip_address": _ips,
            "phone": _phones(config.phone_region),
        }
        self.detectors = {kind: find for kind, find in detectors.items() if kind in config.types}

    def find(self, text: str) -> list[Finding]:
        """Non-overlapping findings, in text order."""
        findings: list[Finding] = []
        for kind, find in self.detectors.items():
            for start, end in find(text):
                if not any(start < f.end and f.start < end for f in findings):
                    findings.append(Finding(kind, start, end))
        return sorted(findings, key=lambda f: f.start)

    def redact(self, text: str) -> tuple[str, list[Finding]]:
        findings = self.find(text)
        for finding in reversed(findings):
            text = text[: finding.start] + PLACEHOLDERS[finding.kind] + text[finding.end :]
        return text, findings


def scrub_rows(rows: list[dict], config: PiiConfig) -> tuple[list[dict], list[Removed], dict[str, int]]:
    """(rows to keep, rows set aside in `drop` mode, findings per type). In `redact` mode the kept
    rows carry placeholders; in `report` mode they are unchanged."""
    scanner = PiiScanner(config)
    redact = cache(scanner.redact)  # a system prompt repeated in every row is scanned once
    kept, removed, counts = [], [], Counter()
    for row in rows:
        found: Counter = Counter()
        if "messages" in row:
            messages = []
            for message in row["messages"]:
                content, findings = redact(message["content"])
                found.update(finding.kind for finding in findings)
                messages.append({**message, "content": content})
            redacted = {**row, "messages": messages}
            if "worse" in row:  # a preference row's worse answers are text too
                worse = [redact(answer) for answer in row["worse"]]
                found.update(finding.kind for _, findings in worse for finding in findings)
                redacted["worse"] = [answer for answer, _ in worse]
        else:
            text, findings = redact(row["text"])
            found.update(finding.kind for finding in findings)
            redacted = {**row, "text": text}
        counts.update(found)
        if not found or config.mode == "report":
            kept.append(row)
        elif config.mode == "drop":
            kinds = ", ".join(sorted(found))
            # The redacted row: removed.jsonl should not become one more copy of the PII.
            removed.append(Removed(redacted, "pii", f"contains PII: {kinds}"))
        else:
            kept.append(redacted)
    return kept, removed, dict(counts.most_common())
