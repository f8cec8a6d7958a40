"""Secrets never reach a cassette: redaction of recorded exchanges and webhooks, before any write.

Pure: given a `Redactor` (built from the config and the environment), `interaction()` and
`webhook()` return redacted copies. What is redacted:

- headers by name: Authorization, Proxy-Authorization, Cookie, Set-Cookie, X-Api-Key, any name
  containing `token`, `secret` or `key` (but not the request ids Idempotency-Key and
  X-Idempotency-Key), and the names in `redact.headers`;
- query parameters named in `redact.query`, JSON body fields at the dotted paths in
  `redact.body_fields` (request and response bodies);
- the value of every secret environment variable the config names (`secret_env`,
  `webhooks.upstream_secret_env`, `webhooks.local_secret_env`), whole and exactly as set,
  wherever it appears: URI, any header, any body, in plain, JSON-escaped, URL-encoded and base64
  spellings (`variables.spellings`);
- every value first seen under a redacted header (whole, and its parts: a Bearer token, Basic
  credentials encoded and decoded, each cookie's value), query parameter or body field, from then
  on, in the same spellings: an upstream that echoes the request's headers leaks nothing.

Every redacted value becomes `MARKER`; in `Cookie` and `Set-Cookie` only each cookie's value
does (`session=<redacted>; Path=/; HttpOnly`), so a client's cookie jar still holds the cookie.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .bodies import NOT_JSON, json_body
from .cassette import Headers, Interaction, Request, Response, Webhook
from .config import Config, env_secrets
from .variables import dotted_get, spellings

MARKER = "<redacted>"

#: Header names always redacted (lowercase).
SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
)
#: A header whose lowercased name contains one of these is redacted...
SECRET_WORDS = ("token", "secret", "key")
#: ...except these, which are request ids, not secrets (matching binds them as variables).
NOT_SECRET = frozenset({"idempotency-key", "x-idempotency-key"})

#: Secrets shorter than this are not searched for in free text (they would hit ordinary bytes).
MIN_SECRET_LENGTH = 4
#: Values learned from redacted headers/fields are scrubbed elsewhere only from this length.
LEARNED_MIN = 8
#: Up to this many spellings in all, a body is searched for each with `in` before any regex.
FEW = 48


def secret_values(config: Config, environ: Mapping[str, str] | None = None) -> list[str]:
    """The value of every secret env var the config names, each whole and exactly as set (a
    secret with spaces or commas is one secret: its words are ordinary text)."""
    names = [
        *config.secret_env,
        *config.webhooks.upstream_secret_env,
        *config.webhooks.local_secret_env,
    ]
    return [v for v in env_secrets(names, environ) if len(v) >= MIN_SECRET_LENGTH]


class Redactor:
    def __init__(
        self,
        *,
        headers: Iterable[str] = (),
        query: Iterable[str] = (),
        body_fields: Iterable[str] = (),
        secrets: Iterable[str] = (),
    ):
        self.headers = frozenset(h.lower() for h in headers)
        self.query = frozenset(query)
        self.body_fields = tuple(tuple(p.split(".")) for p in body_fields)
        self.secrets: list[str] = []
        self._known: set[str] = set()
        self._seen: set[str] = set()  # header values already learned from
        self._spelled: dict[bytes, None] = {}  # every spelling of every secret, in order
        self._needed: list[bytes] = []  # the spellings no shorter one is inside of
        self._pattern: re.Pattern[bytes] | None = None  # built on first use after a learn
        self._few: tuple[bytes, ...] | None = None
        self._header_names: dict[str, bool] = {}
        self.learn(secrets)

    def learn(self, values: Iterable[str], minimum: int = MIN_SECRET_LENGTH) -> None:
        """Treat these values as secrets from now on, wherever they appear.

        Values found under a redacted header, query parameter or body field are learned too, so
        an upstream that echoes them (or a later exchange that reuses them) does not leak them.
        """
        fresh = [v for v in dict.fromkeys(values) if len(v) >= minimum and v not in self._known]
        if not fresh:
            return
        self.secrets.extend(fresh)
        self._known.update(fresh)
        # Only the fresh values' spellings are added: a long recording learns a value per
        # rotating cookie or token, and rebuilding all of them on each learn grew as its cube.
        needed = self._needed
        for secret in fresh:
            for x in spellings(secret):
                if x in self._spelled:
                    continue
                self._spelled[x] = None
                # A few literals: `in` (a C substring search each) beats the regex's alternation
                # at telling that a body holds none of them, which is what nearly every body
                # does. A spelling that contains a shorter one ("Bearer T" holds "T") need not
                # be searched, and a new short one makes the longer ones that hold it needless.
                if not any(y in x for y in needed):
                    needed[:] = [z for z in needed if x not in z]
                    needed.append(x)
        self._few = tuple(needed) if len(needed) <= FEW else None
        self._pattern = None

    @property
    def _secret(self) -> re.Pattern[bytes] | None:
        """One alternation of every spelling, longest first; None while nothing is secret."""
        if self._pattern is None and self._spelled:
            ordered = sorted(self._spelled, key=len, reverse=True)
            self._pattern = re.compile(b"|".join(re.escape(s) for s in ordered))
        return self._pattern

    def learn_headers(self, headers: Headers) -> None:
        """Learn every value under a redacted header name (see `header_secrets`)."""
        secret, seen = self.is_secret_header, self._seen
        named = [(k, v) for k, v in headers if v not in seen and secret(k) and v != MARKER]
        if named:
            if len(seen) < 4096:  # the same token on every request: parsed once
                seen.update(v for _, v in named)
            self.learn((x for k, v in named for x in header_secrets(k, v)), LEARNED_MIN)

    def learn_request(self, req: Request) -> None:
        """Learn what a request carries under redacted names: headers, query, body fields;
        before anything about it is written, logged or answered."""
        self.learn_headers(req.headers)
        if self.query:
            self.uri(req.uri)
        if self.body_fields:
            self.body(req.body)

    @classmethod
    def from_config(cls, config: Config, environ: Mapping[str, str] | None = None) -> Redactor:
        return cls(
            headers=config.redact.headers,
            query=config.redact.query,
            body_fields=config.redact.body_fields,
            secrets=secret_values(config, environ),
        )

    # -- pieces ------------------------------------------------------------------------------

    def is_secret_header(self, name: str) -> bool:
        known = self._header_names.get(name)
        if known is None:
            lowered = name.lower()
            known = lowered in SECRET_HEADERS or lowered in self.headers or (
                lowered not in NOT_SECRET and any(w in lowered for w in SECRET_WORDS)
            )
            if len(self._header_names) < 4096:  # names are few; a flood of odd ones is not
                self._header_names[name] = known
        return known

    def scrub(self, data: bytes) -> bytes:
        """Every secret value in `data` (any spelling) replaced by the marker."""
        if not self._spelled or not data:
            return data
        few = self._literals()
        if few is not None and not _holds(data, few):
            return data
        pattern = self._secret
        assert pattern is not None  # there are spellings
        return pattern.sub(MARKER.encode(), data)

    def _literals(self) -> Sequence[bytes] | None:
        """The literals to search for before the regex, or None to go straight to it: the few,
        or all of them while the regex is not built (a substring search each costs far less
        than building it, and most bodies hold no secret)."""
        if self._few is None and self._pattern is None:
            return self._needed
        return self._few

    def text(self, value: str) -> str:
        if not self._spelled:
            return value
        return self.scrub(value.encode("utf-8", "surrogateescape")).decode(
            "utf-8", "surrogateescape"
        )

    def found(self, *texts: str, data: tuple[bytes, ...] = ()) -> bool:
        """Whether any secret value appears in these: one search each, usually answered no."""
        if not self._spelled:
            return False
        joined = "\n".join(texts).encode("utf-8", "surrogateescape")
        few = self._literals()
        if few is not None:  # exact: every spelling holds one of these, and each is a spelling
            return _holds(joined, few) or any(_holds(d, few) for d in data)
        pattern = self._secret
        assert pattern is not None  # there are spellings
        return any(pattern.search(d) for d in (joined, *data) if d)

    def header_names(self, headers: Headers) -> Headers:
        """Only the headers redacted by name."""
        secret = self.is_secret_header
        return [(k, masked(k, v) if secret(k) else v) for k, v in headers]

    def header_list(self, headers: Headers) -> Headers:
        if not self.found(*(v for _, v in headers)):
            return self.header_names(headers)
        secret = self.is_secret_header
        return [(k, masked(k, v) if secret(k) else self.text(v)) for k, v in headers]

    def uri(self, uri: str) -> str:
        if self.query:
            parts = urlsplit(uri)
            pairs = parse_qsl(parts.query, keep_blank_values=True)
            if any(k in self.query for k, _ in pairs):
                self.learn((v for k, v in pairs if k in self.query and v != MARKER), LEARNED_MIN)
                pairs = [(k, MARKER if k in self.query else v) for k, v in pairs]
                uri = urlunsplit(parts._replace(query=urlencode(pairs, safe="<>")))
        return self.text(uri)

    def body(self, raw: bytes) -> bytes:
        """Configured JSON fields, then secret values; the bytes stay as they were elsewhere."""
        if self.body_fields:
            raw = self._json_fields(raw)
        return self.scrub(raw)

    def _json_fields(self, raw: bytes) -> bytes:
        data = json_body(raw)
        if data is NOT_JSON:
            return raw
        found: list[Any] = []
        for path in self.body_fields:
            _collect(data, path, found)
        if not found:
            return raw
        self.learn((v for v in found if isinstance(v, str) and v != MARKER), LEARNED_MIN)
        if all(isinstance(v, str) for v in found):
            # Replace the JSON string literals in place: every other byte stays as sent.
            for value in found:
                for literal in {json.dumps(value), json.dumps(value, ensure_ascii=False)}:
                    raw = raw.replace(literal.encode("utf-8"), json.dumps(MARKER).encode())
            return raw
        for path in self.body_fields:
            _set(data, path)
        return json.dumps(data).encode("utf-8")

    # -- whole records -----------------------------------------------------------------------

    def interaction(self, item: Interaction) -> Interaction:
        req, res = item.request, item.response
        # what sits under a redacted name is learned first, so it is scrubbed everywhere
        self.learn_headers(req.headers)
        self.learn_headers(res.headers)
        if not (self.query or self.body_fields) and not self.found(
            req.uri, *(v for _, v in req.headers), *(v for _, v in res.headers),
            data=(req.body, res.body),
        ):  # the usual exchange: no secret value anywhere, only header names to mask
            return Interaction(
                Request(req.method, req.uri, self.header_names(req.headers), req.body),
                Response(res.status, res.reason, self.header_names(res.headers), res.body),
                dict(item.meta),
                item.at,
                item.duration,
            )
        # First learn the values under redacted names, then scrub them everywhere.
        if self.query:
            self.uri(req.uri)
        if self.body_fields:
            self.body(req.body)
            self.body(res.body)
        request = Request(
            req.method, self.uri(req.uri), self.header_list(req.headers), self.body(req.body)
        )
        body = self.body(res.body)
        headers = self.header_list(res.headers)
        if body != res.body:
            headers = _fix_length(headers, len(body))
        response = Response(res.status, res.reason, headers, body)
        return Interaction(request, response, dict(item.meta), item.at, item.duration)

    def webhook(self, hook: Webhook) -> Webhook:
        """Headers by rule; the body only where a secret value appears in it (rare: it is what
        gets signed, so it is otherwise kept byte-exact)."""
        self.learn_headers(hook.headers)
        return replace(
            hook,
            headers=self.header_list(hook.headers),
            body=self.scrub(hook.body),
            path=self.text(hook.path),
            target=self.text(hook.target) if hook.target else hook.target,
        )


def masked(name: str, value: str) -> str:
    """A redacted header's value: the marker, but for cookies only each cookie's value is, its
    name and attributes kept (`session=<redacted>; Path=/`), so the cookie stays a cookie."""
    lowered = name.lower()
    if lowered == "set-cookie":
        pair, sep, attributes = value.partition(";")
        cookie, eq, _ = pair.partition("=")
        return f"{cookie.strip()}={MARKER}{sep}{attributes}" if eq and cookie.strip() else MARKER
    if lowered == "cookie":
        names = [item.partition("=") for item in value.split(";")]
        kept = "; ".join(
            f"{cookie.strip()}={MARKER}" if eq and cookie.strip() else MARKER
            for cookie, eq, _ in names
            if cookie.strip() or eq
        )
        return kept or MARKER
    return MARKER


def _holds(data: bytes, literals: Sequence[bytes]) -> bool:
    for literal in literals:
        if literal in data:
            return True
    return False


def header_secrets(name: str, value: str) -> list[str]:
    """The secret values a redacted header carries: the whole value, and for credentials their
    parts: the token after the scheme (`Bearer T`), Basic credentials both base64-encoded and
    decoded (`user:password`, and the password), each cookie's value (`Cookie: a=1; b=2`, and a
    Set-Cookie's first pair)."""
    value = value.strip()
    out = [value]
    lowered = name.lower()
    if lowered in ("cookie", "set-cookie"):
        pairs = value.split(";") if lowered == "cookie" else value.split(";", 1)[:1]
        for pair in pairs:
            _, eq, cookie = pair.strip().partition("=")
            if eq:
                out.append(cookie.strip().strip('"'))
        return out
    scheme, space, credentials = value.partition(" ")
    credentials = credentials.strip()
    if space and credentials and scheme.isalpha():
        out.append(credentials)
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return out
            out.append(decoded)
            out.append(decoded.partition(":")[2])
    return out


def _fix_length(headers: Headers, length: int) -> Headers:
    return [(k, str(length) if k.lower() == "content-length" else v) for k, v in headers]


def _collect(data: Any, path: tuple[str, ...], found: list[Any]) -> None:
    parent = dotted_get(data, path[:-1])
    if isinstance(parent, dict) and path[-1] in parent and parent[path[-1]] is not None:
        found.append(parent[path[-1]])


def _set(data: Any, path: tuple[str, ...]) -> None:
    parent = dotted_get(data, path[:-1])
    if isinstance(parent, dict) and path[-1] in parent and parent[path[-1]] is not None:
        parent[path[-1]] = MARKER


# ---------------------------------------------------------------------------------------------
# logs


class _LogScrubber(logging.Filter):
    """Replaces every secret a live Redactor knows in a log record's message with the marker."""

    def __init__(self) -> None:
        super().__init__()
        self.redactors: weakref.WeakSet[Redactor] = weakref.WeakSet()

    def filter(self, record: logging.LogRecord) -> bool:
        redactors = [r for r in list(self.redactors) if r._spelled]
        if redactors:
            message = original = record.getMessage()
            for redactor in redactors:
                message = redactor.text(message)
            if message != original:
                record.msg, record.args = message, None
        return True


_SCRUBBER = _LogScrubber()
#: Loggers whose records may carry request details: ours and aiohttp's.
LOGGERS = ("replayproxy", "aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.client")


def scrub_logs(redactor: Redactor) -> None:
    """From now on (while `redactor` lives), its secrets never appear in these loggers' messages,
    whatever a request, a webhook or an error message carried."""
    _SCRUBBER.redactors.add(redactor)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _SCRUBBER not in logger.filters:
            logger.addFilter(_SCRUBBER)
