"""PII and secrets: find them, then redact with typed placeholders, drop the row, or only count.

Each detector finds candidates with a pattern and keeps only those that validate, so that
look-alikes survive: a card number must pass the Luhn check and have an issuer's prefix and
length (an IMEI does not), an IBAN its mod-97 checksum (python-stdnum), a US SSN the SSA's
rules (without dashes only next to a keyword), a phone number Google's numbering plan
(phonenumbers), an IP address the `ipaddress` parser and not read as a version. API keys and
tokens are the provider patterns maintained by detect-secrets, plus private key blocks and
keyword secrets (`password: ...`). Names and street addresses are not detected: no library
that installs offline finds them in free text reliably (see the README).
tests/data/pii_cases.jsonl is the labelled set that measures recall and precision per type.
"""
from __future__ import annotations

import bisect
import ipaddress
import itertools
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


# Letters, digits and marks of any script: an address may be written jürgen@müller.de.
_EMAIL_LOCAL = r"[\w%+-]+(?:\.[\w%+-]+)*"
_EMAIL_LABEL = r"[^\W_](?:[\w-]{0,61}[^\W_])?"
# An SSH remote (git@github.com:org/repo) is not an address, hence the lookahead below.
# "(at)" and "[dot]" are how people hide an address from harvesters; a bare "at" is left alone
# (too many sentences say "meet at noon dot com").
_AT = r"(?:@|\s?[(\[{]\s?at\s?[)\]}]\s?)"
_DOT = r"(?:\.|\s?[(\[{]\s?dot\s?[)\]}]\s?)"
_EMAIL = re.compile(
    rf"(?<![\w.%+-]){_EMAIL_LOCAL}{_AT}(?:{_EMAIL_LABEL}{_DOT})+[^\W\d_]{{2,63}}(?![\w-]|:[\w~/])", re.IGNORECASE
)
# 12-19 digits, optionally grouped by spaces (one or two), dashes or dots, not inside a longer number;
# _cards checks the grouping, the issuer prefix and length, and the Luhn digit.
_CARD = re.compile(r"(?<![\d.-])\d(?:(?: {1,2}|[-.])?\d){11,18}(?![\d-]|\.\d)")
_CARD_SEPARATOR = re.compile(r" {1,2}|[-.]")
# Issuer identification numbers and their lengths (ISO/IEC 7812 as the card networks publish them):
# a Luhn-valid number outside these (an IMEI, an order number) is not a card.
_CARD_ISSUERS: list[tuple[tuple[int, int], tuple[int, ...]]] = [
    ((4, 4), (13, 16, 19)),  # Visa
    ((51, 55), (16,)),  # Mastercard
    ((2221, 2720), (16,)),  # Mastercard 2-series
    ((34, 34), (15,)),  # American Express
    ((37, 37), (15,)),
    ((6011, 6011), (16, 17, 18, 19)),  # Discover
    ((644, 649), (16, 17, 18, 19)),
    ((65, 65), (16, 17, 18, 19)),
    ((3528, 3589), (16, 17, 18, 19)),  # JCB
    ((300, 305), (14, 16, 17, 18, 19)),  # Diners Club
    ((36, 36), (14, 16, 17, 18, 19)),
    ((38, 39), (16, 17, 18, 19)),
    ((62, 62), (16, 17, 18, 19)),  # UnionPay
    ((50, 50), (12, 13, 14, 15, 16, 17, 18, 19)),  # Maestro
    ((56, 58), (12, 13, 14, 15, 16, 17, 18, 19)),
    ((67, 67), (12, 13, 14, 15, 16, 17, 18, 19)),
]
_IMEI_CONTEXT = re.compile(r"(?i)\b(?:imei|imeisv|meid|serial|s/n)\b\W{0,5}$")
_IBAN = re.compile(r"\b[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,30}\b")
_SSN = re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])")
# Without dashes nine digits are as likely an order or phone number: only next to a keyword.
_SSN_WITH_KEYWORD = re.compile(
    r"(?i)(?<!\w)(?:ssn|ss#|ss no|social security(?: number| no| #)?|soc\.? ?sec\.?(?: no| #)?)(?!\w)\.?"
    r"(?:\s{0,3}(?:is|was|:|#|=|-|number|no\.?)){0,2}\s{0,3}(\d{3} ?\d{2} ?\d{4})(?![\d-])"
)
_IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?!\d|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# A dotted quad after one of these words, or with a v in front or a pre-release after, is a version
# or a numbered clause, not an address.
_VERSION_BEFORE = re.compile(
    r"(?i)(?:\b(?:version|ver|v|release|rel|build|firmware|fw|patch|update|upgraded?|sdk|kernel|driver|package"
    r"|python|java|node|chrome|firefox|windows|android|ios|section|sec|clause|article|art|chapter|paragraph|para"
    r"|rule|item|step|table|figure|fig|appendix|schedule|exhibit)\b[\s.:=#-]{0,3}(?:to\s|is\s|of\s)?\s?|\bv|§\s?)$"
)
_CIDR = re.compile(r"/\d{1,2}\b")  # 10.0.0.0/8 is a network range, not someone's address
_VERSION_AFTER = re.compile(r"^(?:-(?:alpha|beta|rc|dev|snapshot|final|release)|\+\w)", re.IGNORECASE)
# scheme://user:password@host: only the user:password part is secret. The user may be empty
# (redis://:password@host) and the password may hold an unescaped "@" or "#"; the host is what
# follows the last "@".
_URL_CREDENTIALS = re.compile(r"(?<=://)[^\s:/?#@]*:[^\s/?]+(?=@[^\s@/?#]+)")
# Private keys: PEM (RSA, EC, OpenSSH, PKCS#8, ...) and PGP blocks, with their body, whether or not
# the END line survived. Every repetition is bounded and nothing after the body can fail the
# match, so a text of BEGIN lines without END is scanned once (a lazy `.*?END` was quadratic).
_KEY_NAME = r"(?:[A-Z0-9]{1,12} ){0,4}PRIVATE KEY(?: BLOCK)?"
_KEY_LINE = r"[ \t]*(?:[A-Za-z0-9+/=]{1,200}|[A-Za-z][A-Za-z-]{0,39}: ?[^\n]{0,200})?[ \t]*(?=\r?\n|$)"
_PRIVATE_KEY = re.compile(
    rf"-----BEGIN {_KEY_NAME}-----"
    rf"(?:(?:[ \t]+[A-Za-z0-9+/=]{{1,200}}){{1,4000}}[ \t]*-----END {_KEY_NAME}-----"  # on one line
    rf"|(?:\r?\n{_KEY_LINE}){{0,4000}}(?:\s{{0,4}}-----END {_KEY_NAME}-----)?)"
)
# Current key formats that detect-secrets 1.5 predates or covers only in old forms.
_EXTRA_SECRETS = [
    _PRIVATE_KEY,
    re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{32,}"),  # OpenAI / Anthropic
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),  # Google API key
    re.compile(r"\bhf_[A-Za-z]{34}\b"),  # Hugging Face
    re.compile(r"\bBearer [A-Za-z0-9._~+/-]{20,}=*"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),  # JWT with its signature
    # detect-secrets' npm pattern starts with `//.+/`, quadratic on a text of many "//"; bounded here.
    re.compile(r"//[^\s/]{1,200}(?:/[^\s/]{0,200}){0,20}/:_authToken=[ \t]*(?:npm_\S{1,200}|[A-Fa-f0-9-]{36})"),
]
# detect-secrets' keyword detector, for prose and config files alike: a password-like key, a colon
# or equals sign (or "is"), and the value, of which only the value is secret.
_SECRET_KEYWORD = (
    r"(?:[\w.-]{0,30}?(?:passw(?:or)?d|pwd|passphrase|passcode|secret|api[_ -]?key|auth[_ -]?key|access[_ -]?key"
    r"|private[_ -]?key|client[_ -]?key|db[_ -]?pass|(?:access|auth|bearer|refresh|api)[_ -]?token"
    r"|contrase[ñn]a|passwort|mot de passe)[\w-]{0,30})"
)
_KEYWORD_SECRET = re.compile(
    rf"(?i)(?<![\w-])(?P<key>{_SECRET_KEYWORD})[\]'\"]{{0,2}}[ \t]{{0,3}}"
    r"(?:(?P<sign>:=|={1,3}|:)|(?<=[ \t])(?:is|was)[ \t]|(?<=[ \t]))[ \t]{0,3}"
    r"(?:(?P<quote>[\"'`])(?P<quoted>[^\n\"'`]{1,200})(?P=quote)|(?P<bare>[^\s\"'`,;]{1,200}))"
)
# Values that say there is no secret here: placeholders, variables, code, and the words that follow
# "password:" in instructions and forms.
_NOT_A_SECRET = re.compile(
    r"(?i)^(?:\**|x+|\.+|-+|[<$%{\[].*|[\w.]+[(\[].*|none|null|nil|true|false|empty|required|optional|hidden"
    r"|redacted|masked|unknown|n/a|tbd|reset|expired|changed|change|incorrect|invalid|wrong|forgotten|protected"
    r"|enabled|disabled|yes|no|same|below|above|the|a|an|your|my|our|their|this|that|it|not|see|click|enter|use"
    r"|contact|ask|call|type|choose|set|follow|visit|check|send|must|should|will|can|please|as|is|was|are)$"
)
_IDENTIFIER_BEFORE = re.compile(r"[A-Za-z0-9][-/#]$")
_COUNTRY_CODE = re.compile(r"\+\d{1,3}[ .-]?$")
# detect-secrets plugins whose patterns match ordinary words, or are covered (or bounded) above.
_SKIPPED_PLUGINS = {"ArtifactoryDetector", "BasicAuthDetector", "IPPublicDetector", "NpmDetector"}


def _emails(text: str) -> Iterator[tuple[int, int]]:
    for match in _EMAIL.finditer(text):
        yield match.span()


def _cards(text: str) -> Iterator[tuple[int, int]]:

    for match in _CARD.finditer(text):
        if _is_card(match.group()) and not _IMEI_CONTEXT.search(text[max(0, match.start() - 20) : match.start()]):
            yield match.span()


def _is_card(candidate: str) -> bool:
    from stdnum import luhn

    groups = _CARD_SEPARATOR.split(candidate)
    separators = set(_CARD_SEPARATOR.findall(candidate))
    # Printed cards are grouped by one separator in blocks of 3-6 (4-4-4-4, 4-6-5); "3.14159..." is not.
    if len(groups) > 1 and (len(separators) > 1 or any(not 3 <= len(group) <= 6 for group in groups)):
        return False
    digits = "".join(groups)
    issued = any(
        low <= int(digits[: len(str(low))]) <= high and len(digits) in lengths
        for (low, high), lengths in _CARD_ISSUERS
    )
    return issued and luhn.is_valid(digits)


def _ibans(text: str) -> Iterator[tuple[int, int]]:
    from stdnum import iban

    for match in _IBAN.finditer(text):
        # The pattern runs on into a following code (a BIC, "COBADEFFXXX"): try each group boundary
        # from the longest, so the IBAN is found without it.
        candidate = match.group()
        ends = [len(candidate)] + [index for index in range(len(candidate) - 1, 14, -1) if candidate[index] == " "]
        end = next((end for end in ends if iban.is_valid(candidate[:end].upper())), None)
        if end is not None:
            yield match.start(), match.start() + end


def _ssns(text: str) -> Iterator[tuple[int, int]]:
    from stdnum.us import ssn

    for match in _SSN.finditer(text):
        if ssn.is_valid(match.group()):
            yield match.span()
    for match in _SSN_WITH_KEYWORD.finditer(text):
        if ssn.is_valid(match.group(1).replace(" ", "")):
            yield match.span(1)


def _ips(text: str) -> Iterator[tuple[int, int]]:
    for match in _IPV4.finditer(text):
        if _is_address(match.group()) and not _is_version(text, *match.span()) and not _CIDR.match(text, match.end()):
            yield match.span()
    for match in _IPV6.finditer(text):
        groups = [group for group in match.group().split(":") if group]
        # "::" alone is C++ or Ruby scope, "a::b" a namespace: an address has two groups and a digit.
        if len(groups) >= 2 and any(char.isdigit() for char in match.group()) and _is_address(match.group()):
            yield match.span()


def _is_address(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False  # a version number like 1.2.3.400, or a time like 12:30:45
    return True


def _is_version(text: str, start: int, end: int) -> bool:
    return bool(_VERSION_BEFORE.search(text[max(0, start - 24) : start]) or _VERSION_AFTER.match(text[end : end + 12]))


def _url_credentials(text: str) -> Iterator[tuple[int, int]]:
    for match in _URL_CREDENTIALS.finditer(text):
        yield match.span()


def _keyword_secrets(text: str) -> Iterator[tuple[int, int]]:
    for match in _KEYWORD_SECRET.finditer(text):
        group = "quoted" if match.group("quoted") is not None else "bare"
        value = match.group(group).rstrip(".)")  # the end of the sentence, not of the value
        if not value or _NOT_A_SECRET.match(value):
            continue
        # After "is" ("the password is required"), or after the plain English word "secret" ("the
        # secret: practice daily"), prose is likelier: the value must then look like a password.
        if group == "bare" and match.group("sign") is None and not (_has_letter_and_digit(value) and len(value) >= 6):
            continue  # "password 2 times", "API key policy: ...": a bare space needs a password-like value
        prose = match.group("sign") is None or match.group("key").lower() in ("secret", "secrets")
        if prose and group == "bare" and (value.isalpha() or value.isdigit() or len(value) < 6):
            continue
        start = match.start(group)
        yield start, start + len(value)


def _has_letter_and_digit(value: str) -> bool:
    return any(char.isalpha() for char in value) and any(char.isdigit() for char in value)


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
            # The matcher drops a "+1 " before "(617) ..." when the text goes on with brackets.
            if _IDENTIFIER_BEFORE.search(text, max(0, match.start - 2), match.start):
                continue  # INV-2024-000123 is an invoice number that happens to dial
            prefix = _COUNTRY_CODE.search(text, max(0, match.start - 6), match.start)
            yield (prefix.start() if prefix else match.start), match.end

    return find


class PiiScanner:
    """Finds the configured PII types in text and redacts them."""

    def __init__(self, config: PiiConfig):
        secrets = _secret_patterns() if "secret" in config.types else []
        detectors: dict[str, Callable[[str], Iterator[tuple[int, int]]]] = {
            # Order matters where spans overlap: the earlier, more specific detector wins.
            "url_credentials": _url_credentials,
            "secret": lambda text: itertools.chain(
                (m.span() for p in secrets for m in p.finditer(text)), _keyword_secrets(text)
            ),
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
        findings: list[Finding] = []  # sorted by start, never overlapping
        starts: list[int] = []
        for kind, find in self.detectors.items():
            for start, end in find(text):
                # Bisect, not a scan of every finding: a text can hold thousands (a pasted key dump).
                index = bisect.bisect_right(starts, start)
                if (index and findings[index - 1].end > start) or (index < len(findings) and findings[index].start < end):
                    continue
                findings.insert(index, Finding(kind, start, end))
                starts.insert(index, start)
        return findings

    def redact(self, text: str) -> tuple[str, list[Finding]]:
        findings = self.find(text)
        pieces, position = [], 0
        for finding in findings:
            pieces += [text[position : finding.start], PLACEHOLDERS[finding.kind]]
            position = finding.end
        return "".join(pieces) + text[position:], findings


def _redact_values(value, redact, found: Counter):
    """`value` (a tool call's arguments: objects, lists, strings) with every string redacted."""
    if isinstance(value, str):
        text, findings = redact(value)
        found.update(finding.kind for finding in findings)
        return text
    if isinstance(value, dict):
        return {key: _redact_values(item, redact, found) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact_values(item, redact, found) for item in value]
    return value


def redact_rejected(records: list[dict], config: PiiConfig) -> list[dict]:
    """Rejected records (the row as read and the reason, which may quote it) with PII replaced where the data's is,
    so rejected.jsonl is not one more copy of it. Not counted in the card: these rows are not in the data."""
    if config.mode not in ("redact", "drop"):
        return records
    redact, found = cache(PiiScanner(config).redact), Counter()
    return [{**record, "reason": _redact_values(record["reason"], redact, found),
             "row": _redact_values(record["row"], redact, found)} for record in records]


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
                message = {**message, "content": content}
                if message.get("tool_calls"):  # a call's arguments are text the model learns to write too
                    message["tool_calls"] = [
                        {**call, "function": {**call["function"],
                                              "arguments": _redact_values(call["function"].get("arguments", {}),
                                                                          redact, found)}}
                        for call in message["tool_calls"]]
                messages.append(message)
            redacted = {**row, "messages": messages}
            if isinstance(row.get("label"), str):  # a labelled row's answer is its label: the same placeholders
                redacted["label"] = redact(row["label"])[0]
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
