"""Lint cassettes for CI: schema valid, no secrets left, webhooks caused, variables used.

Pure engine. Every finding names the cassette, where (`interaction 3`, `webhook 1`,
`variable uuid_1`) and the field (`request.headers.Authorization`, `response.body.token`), and
has a fingerprint (cassette, location, a hash of the value: never the value) that an allow-list
can accept. Each check is one function in `CHECKS`; the secret scanner is `leaks.py`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .addresses import is_loopback, origin
from .atomic import write_atomic
from .cassette import Cassette, Webhook
from .config import Config
from .errors import CassetteError, ConfigError
from .journal import open_cassette
from .leaks import Leak, Scanner, placeholder
from .redact import secret_values
from .variables import json_escaped, plain, spellings
from .webhooks import replayed_header

__all__ = ["Finding", "Context", "CHECKS", "check_cassette", "check_paths", "read_allow",
           "accept"]


@dataclass(frozen=True, slots=True)
class Finding:
    cassette: str
    where: str  # "cassette", "interaction 3", "webhook 1", "variable uuid_1"
    field: str  # "request.headers.Authorization", "cause", ...
    message: str
    check: str = "schema"  # which check made it: schema, secret, cause, variable
    digest: str = ""  # sha256 of the flagged value (of the message when there is none)
    secret: str = dataclasses.field(default="", repr=False, compare=False)  # never printed
    part: tuple[str | int, ...] = dataclasses.field(default=(), repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        """What an allow-list names to accept this finding: no value, only its hash."""
        digest = self.digest or _sha256(self.message)
        return f"{_key(self.cassette)}:{self.where}:{self.field}:{digest[:16]}"

    def render(self) -> str:
        field_ = f" {self.field}:" if self.field else ""
        return f"{self.cassette}: {self.where}:{field_} {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "cassette": self.cassette,
            "where": self.where,
            "field": self.field,
            "check": self.check,
            "message": self.message,
            "fingerprint": self.fingerprint,
        }


@dataclass
class Context:
    """What the checks share for one run: the config and the scanner it configures."""

    config: Config = dataclasses.field(default_factory=Config)
    scanner: Scanner | None = None

    def __post_init__(self) -> None:
        if self.scanner is None:
            redact = self.config.redact
            self.scanner = Scanner(
                placeholders=self.config.check.placeholders,
                names=(*redact.headers, *redact.query, *(p.rsplit(".", 1)[-1]
                                                         for p in redact.body_fields)),
                known=secret_values(self.config),
            )


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _key(name: str) -> str:
    """The cassette as an allow-list names it: its path relative to here, with slashes."""
    try:
        rel = os.path.relpath(name)
    except ValueError:  # another drive (Windows)
        rel = name
    return Path(rel).as_posix() if not rel.startswith("..") else Path(name).as_posix()


def mask(value: str) -> str:
    """The first four characters, no more: enough to recognise, not to use (printable: a lone
    surrogate from a JSON string is shown escaped)."""
    if len(value) <= 8:
        return "..."
    return value[:4].encode("utf-8", "backslashreplace").decode("utf-8") + "..."


# ---------------------------------------------------------------------------------------------
# the checks: one function each, (cassette, name, context) -> findings


def check_secrets(cassette: Cassette, name: str, ctx: Context) -> Iterator[Finding]:
    """Secrets left in interactions and webhooks, each with its evidence (see leaks.py)."""
    scanner = ctx.scanner
    assert scanner is not None
    leaks: list[Leak] = []
    for n, item in enumerate(cassette.interactions, start=1):
        leaks += scanner.interaction(n, item)
    for n, hook in enumerate(cassette.webhooks, start=1):
        leaks += scanner.webhook(n, hook)
    for leak in leaks:
        yield Finding(
            name, leak.where, leak.field, f"{leak.reason} ({mask(leak.secret)})", "secret",
            _sha256(leak.secret), leak.secret, leak.part,
        )


def check_causes(cassette: Cassette, name: str, ctx: Context) -> Iterator[Finding]:
    """Every webhook names the interaction that caused it, or replay never sends it."""
    for n, hook in enumerate(cassette.webhooks, start=1):
        if hook.cause is None:
            yield Finding(
                name, f"webhook {n}", "cause",
                "no cause: replay cannot tell which interaction triggers it, so it is never due",
                "cause",
            )


def check_variables(cassette: Cassette, name: str, ctx: Context) -> Iterator[Finding]:
    """Every listed variable has positions, in interactions that exist and carry its value."""
    count = len(cassette.interactions)
    for n, var in enumerate(cassette.variables):
        where = f"variable {var.name}"
        field_ = f"replayproxy.variables[{n}].positions"
        numbers = [_interaction_of(p) for p in var.positions]
        valid = [k for k in numbers if k is not None and 1 <= k <= count]
        if not var.positions:
            message = "unused: it has no positions"
        elif not valid:
            message = f"unused: its positions name no interaction 1..{count}"
        elif not any(_carries(cassette.interactions[k - 1], var.value) for k in valid):
            message = f"unused: {var.value!r} appears in none of its requests"
        else:
            continue
        yield Finding(name, where, field_, message, "variable")


def missing_webhooks(cassette: Cassette, name: str, ctx: Context) -> Iterator[Finding]:
    """The exchanges whose webhook never came while recording (the recorder notes them as
    `webhooks_missing` when it stopped first): a replay cannot send what was never recorded."""
    for n in cassette.meta.get("webhooks_missing") or []:
        if isinstance(n, int):
            yield Finding(
                name, f"interaction {n}", "replayproxy.webhooks_missing",
                "it sent a callback URL, but the recording stopped before its webhook came: a "
                "replay will never send it; record again and let the session wait for it",
                "webhook",
            )


def check_webhook_targets(cassette: Cassette, name: str, ctx: Context) -> Iterator[Finding]:
    """Webhooks whose target, method or headers a real sender's would not have (see
    `crafted_webhook`): replay refuses or drops them, and a reviewer should know."""
    for n, hook in enumerate(cassette.webhooks, start=1):
        for field_, message in crafted_webhook(hook):
            yield Finding(name, f"webhook {n}", field_, message, "webhook")


Check = Callable[[Cassette, str, Context], Iterable[Finding]]
#: Run in this order on every cassette that loads.
CHECKS: list[Check] = [check_secrets, check_causes, check_variables, missing_webhooks,
                      check_webhook_targets]


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
    for name, value in hook.headers:
        if placeholder(value):
            continue  # redacted while recording: a real sender's header, and nothing to abuse
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
    if value in req.uri or any(value in v for _, v in req.headers):
        return True
    # plain or JSON-escaped (a number written as a number is its plain spelling)
    return any(s in req.body for s in spellings(value, (plain, json_escaped)))


# ---------------------------------------------------------------------------------------------
# running them


def check_cassette(cassette: Cassette, name: str, ctx: Context | None = None) -> list[Finding]:
    ctx = ctx or Context()
    return [finding for check in CHECKS for finding in check(cassette, name, ctx)]


def check_paths(
    paths: Iterable[str | Path], ctx: Context | None = None, loaded: dict | None = None
) -> Iterator[Finding]:
    """Every finding of every cassette, in order; an unreadable or invalid file is one finding.
    `loaded`, when given, keeps each cassette that loaded (for --fix)."""
    ctx = ctx or Context()
    for path in paths:
        name = str(path)
        try:
            cassette = open_cassette(path)
        except CassetteError as exc:
            message = str(exc)
            if message.startswith(name):
                message = message[len(name) :].lstrip(":").strip()
            where, field_, text = _split_schema_error(message)
            yield Finding(name, where, field_, text)
            continue
        if loaded is not None:
            loaded[name] = cassette
        yield from check_cassette(cassette, name, ctx)


def read_allow(path: str | Path) -> set[str]:
    """Fingerprints, one a line; `#` starts a comment. A missing file accepts nothing (it can
    only make `check` stricter, never hide a finding)."""
    return _fingerprints(_allow_text(path))


def _allow_text(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read allow-list: {exc.strerror}") from None


def _fingerprints(text: str) -> set[str]:
    return {
        line.split("#", 1)[0].strip()
        for line in text.splitlines()
        if line.split("#", 1)[0].strip()
    }


def accept(path: str | Path, findings: Iterable[Finding]) -> int:
    """Add these findings' fingerprints to the allow-list at `path` (atomic); how many were new."""
    old = _allow_text(path)
    known = _fingerprints(old)
    lines = []
    for finding in findings:
        if finding.fingerprint not in known:
            known.add(finding.fingerprint)
            lines.append(f"{finding.fingerprint}  # {finding.message.split(' (')[0]}\n")
    if old and not old.endswith("\n"):
        old += "\n"
    write_atomic(Path(path), (old + "".join(lines)).encode("utf-8"))
    return len(lines)


def _split_schema_error(message: str) -> tuple[str, str, str]:
    """'5: interactions[0].response.status.code: must be ...'
    -> ('interaction 1 (line 5)', 'response.status.code', 'schema: must be ...')."""
    line = ""
    head, sep, rest = message.partition(": ")
    if sep and head.strip().isdigit():
        line, message = head.strip(), rest
    where = "cassette"
    field_ = ""
    m = re.match(r"(interactions|webhooks)\[(\d+)\]\.?([\w.\[\]]*): (.*)", message)
    if m:
        where = f"{m.group(1)[:-1]} {int(m.group(2)) + 1}"
        field_, message = m.group(3), m.group(4)
    else:
        m = re.match(r"(replayproxy|version|interactions|webhooks)([\w.\[\]]*): (.*)", message)
        if m:
            field_, message = m.group(1) + m.group(2), m.group(3)
    if line:
        where += f" (line {line})"
    return where, field_, ("schema: " if line or field_ else "") + message
