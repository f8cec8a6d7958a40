"""Lint cassettes for CI: schema valid, no secret-looking values, webhooks caused, variables used.

Pure engine. Every finding names the cassette, where (`interaction 3`, `webhook 1`,
`variable uuid_1`) and the field (`request.headers.Authorization`, `response.body.token`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .addresses import is_loopback, origin
from .cassette import Cassette, Headers, Webhook, load
from .config import Config
from .errors import CassetteError
from .matching import ensure_variables, normaliser
from .variables import MINTED_HEADERS, json_leaves, shape
from .webhooks import replayed_header

REDACTED = "<redacted>"

#: Header names whose values are credentials (case-insensitive, substring).
_SECRET_HEADER = re.compile(
    r"authorization|cookie|token|secret|passw|api[-_]?key|[-_]key$|^key$|signature|credential",
    re.IGNORECASE,
)
#: JSON field and query parameter names whose values are credentials.
_SECRET_FIELD = re.compile(
    r"(^|[_-])(password|passwd|secret|api[_-]?key|apikey|access[_-]?token|refresh[_-]?token|"
    r"auth[_-]?token|id[_-]?token|private[_-]?key|client[_-]?secret|token)$",
    re.IGNORECASE,
)
#: Well-known credential formats, whatever field they sit in.
_KNOWN_SECRET = re.compile(
    r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}"
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}"
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|\bwhsec_[A-Za-z0-9+/=]{16,}"
)
_CANDIDATE = re.compile(r"[A-Za-z0-9+/_=-]{24,}")


@dataclass(frozen=True, slots=True)
class Finding:
    cassette: str
    where: str  # "cassette", "interaction 3", "webhook 1", "variable uuid_1"
    field: str  # "request.headers.Authorization", "cause", ...
    message: str

    def render(self) -> str:
        field = f" {self.field}:" if self.field else ""
        return f"{self.cassette}: {self.where}:{field} {self.message}"


def entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    if not text:
        return 0.0
    counts: dict[str, int] = {}
    for ch in text:
        counts[ch] = counts.get(ch, 0) + 1
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def looks_random(token: str) -> bool:
    """A long token of mixed case and digits with high entropy: an API key, not a word or hash.

    Hex-only strings (hashes, UUIDs) and values of a minted shape (UUID, ULID, times, URLs) are
    not flagged: they are ids, not credentials.
    """
    if len(token) < 24 or re.fullmatch(r"[0-9a-fA-F-]+", token):
        return False
    if shape(token) in ("uuid", "ulid", "time", "url"):
        return False
    classes = sum(
        bool(re.search(p, token)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]")
    )
    return classes == 3 and entropy(token) >= 4.0


def secret_in(text: str, ignore: set[str]) -> str | None:
    """The secret-looking part of `text`, or None."""
    known = _KNOWN_SECRET.search(text)
    if known:
        return known.group(0)
    for token in _CANDIDATE.findall(text):
        if token in ignore or any(token in v or v in token for v in ignore if len(v) >= 16):
            continue
        if looks_random(token):
            return token
    return None


def _mask(value: str) -> str:
    return value[:4] + "..." if len(value) > 8 else "..."


class _Checker:
    def __init__(self, name: str, cassette: Cassette):
        self.name = name
        self.cassette = cassette
        self.findings: list[Finding] = []
        # Minted values the app sent (idempotency keys, tokens found by shape) are not secrets,
        # unless they sit under a secret-looking name (checked by name first).
        declared = list(cassette.variables)
        ensure_variables(cassette, normaliser(cassette, Config()))
        self.minted = {v.value for v in cassette.variables}
        cassette.variables = declared

    def add(self, where: str, field: str, message: str) -> None:
        self.findings.append(Finding(self.name, where, field, message))

    def headers(self, where: str, prefix: str, headers: Headers) -> None:
        for name, value in headers:
            field = f"{prefix}.{name}"
            if value in (REDACTED, ""):
                continue
            if name.lower() in MINTED_HEADERS:
                continue  # minted per request by convention (idempotency keys, trace ids)
            if _SECRET_HEADER.search(name):
                self.add(where, field, f"secret-looking header not redacted ({_mask(value)})")
                continue
            found = secret_in(value, self.minted)
            if found:
                self.add(where, field, f"high-entropy value, looks like a secret ({_mask(found)})")

    def query(self, where: str, prefix: str, uri: str) -> None:
        for name, value in parse_qsl(urlsplit(uri).query, keep_blank_values=True):
            field = f"{prefix}.{name}"
            if value in (REDACTED, ""):
                continue
            if _SECRET_FIELD.search(name):
                self.add(where, field, f"secret-looking query parameter not redacted "
                                       f"({_mask(value)})")
            elif secret_in(value, self.minted):
                self.add(where, field, "high-entropy value, looks like a secret")

    def body(self, where: str, prefix: str, body: bytes) -> None:
        if not body:
            return
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return  # binary: nothing readable to leak
        try:
            data = json.loads(text) if text[:1] in "{[" else None
        except ValueError:
            data = None
        if data is None:
            found = secret_in(text, self.minted)
            if found:
                self.add(where, prefix, f"high-entropy value, looks like a secret ({_mask(found)})")
            return
        for position, value in json_leaves(data, prefix):
            if not isinstance(value, str) or value in (REDACTED, ""):
                continue
            key = position.rsplit(".", 1)[-1]
            if _SECRET_FIELD.search(key):  # minted or not: a token under that name is a secret
                self.add(where, position, f"secret-looking field not redacted ({_mask(value)})")
                continue
            found = secret_in(value, self.minted)
            if found:
                self.add(
                    where, position, f"high-entropy value, looks like a secret ({_mask(found)})"
                )

    def run(self) -> list[Finding]:
        cassette = self.cassette
        for n, item in enumerate(cassette.interactions, start=1):
            where = f"interaction {n}"
            self.query(where, "request.query", item.request.uri)
            self.headers(where, "request.headers", item.request.headers)
            self.body(where, "request.body", item.request.body)
            self.headers(where, "response.headers", item.response.headers)
            self.body(where, "response.body", item.response.body)
        for n, hook in enumerate(cassette.webhooks, start=1):
            where = f"webhook {n}"
            if hook.cause is None:
                self.add(
                    where,
                    "cause",
                    "no cause: replay cannot tell which interaction triggers it, so it is "
                    "never due",
                )
            self.headers(where, "headers", hook.headers)
            self.body(where, "body", hook.body)
            for field, message in crafted_webhook(hook):
                self.add(where, field, message)
            if hook.target:
                self.query(where, "target.query", hook.target)
        self.variables()
        return self.findings

    def variables(self) -> None:
        count = len(self.cassette.interactions)
        for n, var in enumerate(self.cassette.variables):
            where = f"variable {var.name}"
            field = f"replayproxy.variables[{n}].positions"
            numbers = [_interaction_of(p) for p in var.positions]
            valid = [k for k in numbers if k is not None and 1 <= k <= count]
            if not var.positions:
                self.add(where, field, "unused: it has no positions")
            elif not valid:
                self.add(where, field, f"unused: its positions name no interaction 1..{count}")
            elif not any(
                _carries(self.cassette.interactions[k - 1], var.value) for k in valid
            ):
                self.add(where, field, f"unused: {var.value!r} appears in none of its requests")


def crafted_webhook(hook: Webhook) -> list[tuple[str, str]]:
    """(field, message) for what a webhook recorded from a real sender would not have: a target
    off loopback, a method other than POST, headers that replay drops (credentials, forwarding,
    Host, Origin, method overrides). Replay refuses or drops them; a reviewer should know."""
    out = []
    if hook.target:
        where = origin(hook.target)
        if where is None or not is_loopback(where[1]):
            host = where[1] if where else hook.target[:80]
            out.append(("target", f"the target host {host!r} is not loopback: replay sends it "
                                  "only to the app's callback URL or an allow-listed host"))
    if hook.method != "POST":
        out.append(("method", f"method {hook.method[:20]!r}: replay sends POST unless "
                              "webhooks.allow_methods allows it"))
    for name, _ in hook.headers:
        if not replayed_header(name) and name.lower() not in _SENDER_HEADERS:
            out.append((f"headers.{name}", "a header replay never sends again (crafted?)"))
    return out


#: Headers every real sender has, which replay drops as describing the recorded hop only.
_SENDER_HEADERS = frozenset(
    {"accept", "accept-encoding", "content-length", "host", "connection", "date", "expect"}
)


def _interaction_of(position: str) -> int | None:
    head, _, _ = position.partition(":")
    return int(head) if head.isdigit() else None


def _carries(item: Any, value: str) -> bool:
    req = item.request
    if value in req.uri or value.encode() in req.body:
        return True
    if any(value in v for _, v in req.headers):
        return True
    try:  # JSON-escaped, or a number written as a number
        return json.dumps(value)[1:-1].encode() in req.body
    except (TypeError, ValueError):  # pragma: no cover
        return False


def check_cassette(cassette: Cassette, name: str) -> list[Finding]:
    return _Checker(name, cassette).run()


def check_paths(paths: list[str | Path]) -> Iterator[Finding]:
    """Every finding of every cassette, in order; an unreadable or invalid file is one finding."""
    for path in paths:
        name = str(path)
        try:
            cassette = load(path)
        except CassetteError as exc:
            message = str(exc)
            if message.startswith(name):
                message = message[len(name) :].lstrip(":").strip()
            where, field, text = _split_schema_error(message)
            yield Finding(name, where, field, text)
            continue
        yield from check_cassette(cassette, name)


def _split_schema_error(message: str) -> tuple[str, str, str]:
    """'5: interactions[0].response.status.code: must be ...'
    -> ('interaction 1 (line 5)', 'response.status.code', 'schema: must be ...')."""
    line = ""
    head, sep, rest = message.partition(": ")
    if sep and head.strip().isdigit():
        line, message = head.strip(), rest
    where = "cassette"
    field = ""
    m = re.match(r"(interactions|webhooks)\[(\d+)\]\.?([\w.\[\]]*): (.*)", message)
    if m:
        where = f"{m.group(1)[:-1]} {int(m.group(2)) + 1}"
        field, message = m.group(3), m.group(4)
    else:
        m = re.match(r"(replayproxy|version|interactions|webhooks)([\w.\[\]]*): (.*)", message)
        if m:
            field, message = m.group(1) + m.group(2), m.group(3)
    if line:
        where += f" (line {line})"
    return where, field, ("schema: " if line or field else "") + message
