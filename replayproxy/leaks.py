"""Where a cassette still holds a secret, each with its evidence; nothing else.

A value is reported only with evidence: a known credential format (`formats.py`), a
secret-named place (header, cookie, query or form parameter, JSON field, XML element, the
segment after `/sessions/`) holding a value that is not a placeholder, or a high-entropy token
where tokens live (after `Bearer `, under a name like `key`). Never on its own: a URL, a path,
a hash or ETag, an id or trace header, Report-To/NEL, a number or a boolean, a cookie that holds
no secret, a value whose secret part is already a placeholder (`Bearer <redacted>`, `ntn_***`).

Every pattern here is linear in its input: bounded repetitions over character classes, and the
credential formats run through RE2. Pure: no sockets, no click.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from urllib.parse import parse_qsl, unquote, urlsplit

import re2

from . import formats
from .bodies import NOT_JSON, json_body
from .cassette import Headers, Interaction, Webhook, header
from .coding import decode_body
from .variables import MINTED_HEADERS, shape

#: Candidates read from one text at most (pairs, elements, URLs): linear, and enough.
MAX_MATCHES = 10_000
#: The most a compressed body is inflated to for scanning (a bomb stops there).
MAX_DECODED = 64 * 1024 * 1024
#: Multipart parts inside multipart parts read as such; deeper ones are read as text.
MAX_NESTING = 8


@dataclass(frozen=True, slots=True)
class Leak:
    """One secret: where, why, and the exact text (`secret` is never printed, only hashed)."""

    where: str  # "interaction 3", "webhook 1"
    field: str  # "request.headers.Cookie.SID", "response.body.data.0.token"
    secret: str
    reason: str  # "Stripe Access Key", "secret-named header", ...
    # what --fix rewrites
    part: tuple[str | int, ...] = dataclasses.field(default=(), compare=False)


# ---------------------------------------------------------------------------------------------
# values


_MARKERS = re.compile(
    r"<[^<>\n]{0,80}>|\{\{[^{}\n]{0,80}\}\}|\$\{[^{}\n]{0,80}\}|%[A-Za-z_]{3,40}%"
    r"|\b(?:redacted|filtered|removed|masked|hidden|scrubbed|censored|obfuscated|sanitized"
    r"|omitted|placeholder|dummy|changeme)\b"
    r"|\*{3,}|[xX]{4,}|\u2022{3,}|#{4,}|\.{3,}|\u2026|0{8,}",
    re.IGNORECASE,
)
_RUN = re.compile(r"[A-Za-z0-9]{12,}")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:[.,]\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_HEX = re.compile(r"[0-9a-fA-F-]+")
_WORDS = frozenset(
    "true false null none nil undefined yes no on off enabled disabled required optional "
    "n/a na bearer basic token".split()
)
_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
)


def placeholder(value: str, extra: frozenset[str] = frozenset()) -> bool:
    """Empty, a configured placeholder, or a value whose secret part is a marker:
    `<redacted>`, `REDACTED`, `***`, `XXXX`, `{{token}}`, `Bearer <redacted>`, `ntn_***`."""
    stripped = value.strip().strip("\"'")
    if not stripped or stripped in extra or value in extra:
        return True
    residue = _MARKERS.sub(" ", stripped)
    if residue == stripped:
        return False
    for extra_value in extra:
        residue = residue.replace(extra_value, " ")
    return not any(_substance(m[0]) for m in _RUN.finditer(residue))


def _substance(run: str) -> bool:
    """Text that could be a secret (a run of 12+ letters and digits, a value in free text): it
    mixes letters and digits, or is 20 characters long."""
    return len(run) >= 20 or (any(c.isdigit() for c in run) and any(c.isalpha() for c in run))


_WORD = re.compile(r"[a-z]{1,12}|[A-Z][a-z]{1,12}")
_PROSE = re.compile(
    r"\(?(?:[A-Z]?[a-z]+|[A-Z]{2,6})[',.;:!?)]*(?:\s+\(?(?:[A-Z]?[a-z]+|[A-Z]{2,6})[',.;:!?)]*)+"
)


def trivial(value: str, plain_words: bool = True) -> bool:
    """Never a secret, whatever its name: a number, a boolean, a URL or path, a date, a plain
    word (`active`, `Password`) or prose (`Your session has expired.`)."""
    v = value.strip().strip("\"'")
    if len(v) > 4096:
        return False
    if _NUMBER.fullmatch(v) or v.lower() in _WORDS:
        return True
    if plain_words and (_WORD.fullmatch(v) or (len(v) <= 400 and _PROSE.fullmatch(v))):
        return True
    if _TIME.fullmatch(v):
        return True
    if v.startswith(("http://", "https://")) and "@" not in v.split("/", 3)[2]:
        return True
    return v.startswith("/") and " " not in v and ":" not in v


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
    not: they are ids.
    """
    if len(token) < 24 or len(token) > 4096 or _HEX.fullmatch(token):
        return False
    if shape(token) in ("uuid", "ulid", "time", "url"):
        return False
    lower = upper = digit = False
    for ch in token:
        lower = lower or ch.islower()
        upper = upper or ch.isupper()
        digit = digit or ch.isdigit()
    return lower and upper and digit and entropy(token) >= 4.0


def token_like(value: str) -> bool:
    """What a credential looks like without a name to say so: long, random, no spaces."""
    v = value.strip()
    return " " not in v and looks_random(v)


# ---------------------------------------------------------------------------------------------
# names

_SPLIT = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
STRONG = frozenset(
    "password passwd pwd passphrase pass secret secrets token apikey authorization auth "
    "credential credentials session sessionid sessid sess jsessionid phpsessid aspxauth jwt "
    "bearer privatekey accesskey secretkey authtoken".split()
)
#: Session ids by their short names: secret in a cookie or a query (`?sid=`), but in a JSON
#: field or a header `sid` is as often a public id (Twilio's message and account SIDs).
SID = frozenset("sid ssid psid hsid apisid sapisid".split())
#: Words that make a name a session handle even when it ends in `id`.
SESSION = frozenset("session sessionid sessid sess sid jsessionid phpsessid psid ssid".split())
#: A name with one of these is about a secret, not one: counts, kinds, places, pagination.
NOT = frozenset(
    "csrf xsrf authenticity public pub nonce ratelimit rate limit limits remaining count type "
    "expires expiry expiration exp ttl length size url uri href endpoint link links id ids name "
    "names hint format kind alg algorithm usage hash digest checksum fingerprint version policy "
    "idempotency cache partition sort primary foreign object page cursor continuation sync "
    "delta skip pagination path file field fields header headers timestamp date time at in "
    "method methods scope scopes prefix masked last4 prompt completion max min total tokens "
    "tokenizer issuer audience lifetime duration timeout state status enabled required present "
    "valid used label description display placeholder example provider mode strategy "
    "location resource allow control expose keys tile tiles length socket".split()
)
#: `<qualifier> key` names a credential (`x-api-key`, AccountKey, Ocp-Apim-Subscription-Key).
KEY_QUALIFIERS = frozenset(
    "api access secret private account subscription functions function master signing client "
    "auth app application license service admin encryption storage sas shared consumer "
    "webhook x".split()
)
#: Single-word compounds: a name ending so is a secret, unless it starts as pagination does.
_SUFFIXES = ("token", "secret", "password", "passwd", "apikey", "sessionid", "sessid",
             "accesskey", "secretkey", "privatekey")
_NOT_PREFIXES = ("page", "next", "skip", "sync", "continuation", "csrf", "xsrf", "delta",
                 "cursor", "max", "total", "prompt", "completion", "resume", "public")
#: Extra words that make a cookie name a session cookie.
COOKIE_WORDS = frozenset("remember logged login identity cookies user".split()) | SID
#: A path segment after one of these is a handle (`/sessions/<id>`, `/download/<handle>`).
PATH_WORDS = frozenset(
    "session sessions token tokens key keys secret secrets apikey apikeys download downloads "
    "share shared invite invites reset magic auth".split()
)

STRONG_NAME, WEAK_NAME = 2, 1


def words(name: str) -> list[str]:
    return [w.lower() for w in _SPLIT.findall(name[:128])]


@lru_cache(maxsize=8192)  # names repeat: every request carries the same few
def secret_name(
    name: str, extra: frozenset[str] = frozenset(), names: frozenset[str] = frozenset()
) -> int:
    """2 for a name that holds a credential, 1 for one that may (`key`, `x_key`), else 0.
    `extra` are more secret words for this place, `names` whole names (the config's redact
    names), lowercase."""
    if names and name.lower() in names:
        return STRONG_NAME
    parts = words(name)
    if not parts:
        return 0
    present = set(parts)
    session = bool(present & SESSION)
    if present & NOT and not (session and present & NOT <= {"id", "ids"}):
        return 0
    if parts[0] == "next" and set(parts[1:]) <= {"token"}:
        return 0  # NextToken: a pagination cursor
    if present & (STRONG | extra):
        return STRONG_NAME
    if len(parts) == 1:
        word = parts[0]
        if word.endswith(_SUFFIXES) and not word.startswith(_NOT_PREFIXES):
            return STRONG_NAME
    if "key" in present:
        return STRONG_NAME if present & KEY_QUALIFIERS else WEAK_NAME
    return 0


# ---------------------------------------------------------------------------------------------
# text: pairs, bearer tokens, XML elements, URLs (bounded repetitions: linear)

# RE2 over UTF-8 bytes: linear whatever the text (Python's engine took seconds per MiB on
# `a.a.a.`); a pair's name must hold a word secret names hold, so ordinary text yields nothing.
_PAIR = re2.compile(
    rb"(?:^|[^A-Za-z0-9_])([A-Za-z0-9_.-]{0,24}(?i:pass|pwd|secret|token|key|auth|sess|sid|"
    rb"credential|cookie|jwt|bearer)[A-Za-z0-9_.-]{0,24})[\"']?\s{0,3}[:=]\s{0,3}[\"']?"
    rb"([^\s\"'<>&,;{}()\[\]]+)"
)
_BEARER = re2.compile(rb"\b(?:Bearer|Token|token|bearer)\s{1,3}([A-Za-z0-9._~+/=-]{16,})")
_ELEMENT = re2.compile(rb"<([A-Za-z][\w:.-]{0,40})(?:\s[^<>]*)?>([^<]+)</")
_URL = re2.compile(rb"https?://[^\s\"'<>\\]+")
_SCHEME = re.compile(r"(?:Bearer|bearer|Token|token)\s{1,3}[A-Za-z0-9._~+/=-]{16,}\s*$")
_COOKIE_NOISE = frozenset({"lang", "locale", "theme", "tz", "timezone", "currency", "country"})


# ---------------------------------------------------------------------------------------------


class Scanner:
    """Finds the leaks of one record at a time; `placeholders` and `names` come from the config
    (check.placeholders, redact.headers/query), `known` are secret values from the environment."""

    def __init__(
        self,
        placeholders: Iterable[str] = (),
        names: Iterable[str] = (),
        known: Iterable[str] = (),
    ):
        self.placeholders = frozenset(p for p in placeholders if p)
        self.names = frozenset(n.lower() for n in names if n)
        self.known = [k for k in known if len(k) >= 8]  # a shorter one would hit prose
        self.out: list[Leak] = []
        self.where = ""
        self.part: tuple[str | int, ...] = ()

    # -- records ---------------------------------------------------------------------------

    def interaction(self, number: int, item: Interaction) -> list[Leak]:
        self.out = []
        self.where = f"interaction {number}"
        req, res = item.request, item.response
        self.part = ("uri",)
        self.uri(req.uri, "request")
        self.headers("request.headers", req.headers, "request.header")
        self.part = ("request.body",)
        self.body("request.body", req.body, req.headers)
        self.headers("response.headers", res.headers, "response.header")
        self.part = ("response.body",)
        self.body("response.body", res.body, res.headers)
        return self._unique()

    def webhook(self, number: int, hook: Webhook) -> list[Leak]:
        self.out = []
        self.where = f"webhook {number}"
        self.headers("headers", hook.headers, "header")
        self.part = ("body",)
        self.body("body", hook.body, hook.headers)
        self.part = ("path",)
        self.uri(hook.path, "", path_prefix="path")
        if hook.target:
            self.part = ("target",)
            self.uri(hook.target, "target")
        return self._unique()

    def _unique(self) -> list[Leak]:
        seen: set[tuple[str, str]] = set()
        out = []
        for leak in self.out:
            key = (leak.field, leak.secret)
            if key not in seen:
                seen.add(key)
                out.append(leak)
        return out

    def add(self, field_: str, secret: str, reason: str) -> None:
        self.out.append(Leak(self.where, field_, secret, reason, self.part))

    # -- evidence ----------------------------------------------------------------------------

    def formats(self, field_: str, text: str) -> bool:
        """Known formats and configured secret values in `text`; True when one was found."""
        hit = False
        for name, secret in formats.find(text):
            if not placeholder(secret, self.placeholders) and not _low_variety(secret):
                self.add(field_, secret, name)
                hit = True
        for value in self.known:
            if value in text:
                self.add(field_, value, "the value of a secret environment variable")
                hit = True
        return hit

    def named(
        self, field_: str, name: str, value: str, what: str, extra: frozenset[str] = frozenset()
    ) -> None:
        """A value under a name: a format anywhere; any real value under a secret name."""
        if self.formats(field_, value):
            return
        strength = secret_name(name, extra, self.names)
        if not strength and _SCHEME.match(value):
            strength = STRONG_NAME  # `Bearer <token>` is a credential whatever holds it
        if not strength or placeholder(value, self.placeholders) or trivial(value):
            if value.startswith(("http://", "https://")):
                self.url(field_, value)
            return
        if strength == STRONG_NAME or token_like(value):
            self.add(field_, _secret_part(value), f"secret-named {what} not redacted")

    def text(self, field_: str, text: str) -> None:
        """Free text (XML, HTML, logs): formats, `name=value` pairs, bearer tokens, URLs."""
        self.formats(field_, text)
        data = text.encode("utf-8", "surrogatepass")
        for m in islice(_BEARER.finditer(data), MAX_MATCHES):
            token = _str(m[1])
            if not placeholder(token, self.placeholders):
                self.add(field_, token, "token after Bearer")
        for m in islice(_PAIR.finditer(data), MAX_MATCHES):
            name = _str(m[1])
            self.in_text(f"{field_}.{name}", name, _str(m[2]), "secret-named value in text")
        for m in islice(_ELEMENT.finditer(data), MAX_MATCHES):
            name = _str(m[1]).rpartition(":")[2]
            self.in_text(f"{field_}.{name}", name, _str(m[2]).strip(), "secret-named XML element")
        for m in islice(_URL.finditer(data), MAX_MATCHES):
            self.url(field_, _str(m[0]), formats_done=True)

    def in_text(self, field_: str, name: str, value: str, reason: str) -> None:
        """In free text a name is weaker evidence: the value must look like a credential too."""
        if len(value) < 6:
            return
        strength = secret_name(name, names=self.names)
        if not strength or any(value == leak.secret for leak in self.out[-8:]):
            return
        if strength == STRONG_NAME and _substance(value) and not (
            placeholder(value, self.placeholders) or trivial(value)
        ):
            self.add(field_, value, reason)
        elif strength == WEAK_NAME and token_like(value):
            self.add(field_, value, reason)

    def url(self, field_: str, url: str, formats_done: bool = False) -> None:
        """A URL's password and its secret-named query (and fragment) parameters."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return
        if parts.password and not placeholder(unquote(parts.password), self.placeholders):
            self.add(f"{field_}.password", parts.password, "password in URL")
        for section, raw in (("query", parts.query), ("fragment", parts.fragment)):
            if "=" not in raw:
                continue
            for name, value in parse_qsl(raw, keep_blank_values=True):
                where = f"{field_}.{section}.{name}"
                if formats_done:  # the whole text was searched for formats already
                    if secret_name(name, names=self.names) == STRONG_NAME and not (
                        placeholder(value, self.placeholders) or trivial(value)
                    ):
                        self.add(where, value, "secret-named query parameter not redacted")
                else:
                    self.named(where, name, value, "query parameter", SID)

    # -- locations -----------------------------------------------------------------------------

    def uri(self, uri: str, prefix: str, path_prefix: str | None = None) -> None:
        try:
            parts = urlsplit(uri)
        except ValueError:
            return
        base = f"{prefix}." if prefix else ""
        if parts.password and not placeholder(unquote(parts.password), self.placeholders):
            self.add(f"{base}uri.password", parts.password, "password in URL")
        segments = parts.path.split("/")
        for i, raw in enumerate(segments):
            if not raw:
                continue
            where = f"{path_prefix or base + 'path'}.{i}"
            segment = unquote(raw)
            if self.formats(where, segment):
                continue
            segment, _, params = segment.partition(";")  # ;jsessionid=...
            for param in params.split(";") if params else ():
                name, _, value = param.partition("=")
                if value:
                    self.named(where, name, value, "path parameter")
            before = segments[i - 1].lower() if i > 0 else ""
            if (before in PATH_WORDS or secret_name(before, names=self.names) == STRONG_NAME) and (
                not placeholder(segment, self.placeholders) and not trivial(segment)
            ) and (_handle(segment) or token_like(segment)):
                self.add(where, segment, f"handle after /{segments[i - 1]}/ in the path")
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            self.named(f"{base}query.{name}", name, value, "query parameter", SID)

    def headers(self, prefix: str, headers: Headers, part: str) -> None:
        for index, (name, value) in enumerate(headers):
            self.part = (part, index)
            field_ = f"{prefix}.{name}"
            lowered = name.lower()
            if not value or lowered in MINTED_HEADERS:
                continue
            if lowered in ("cookie", "set-cookie"):
                self.cookies(field_, value, lowered == "set-cookie")
            elif lowered in ("authorization", "proxy-authorization"):
                self.authorization(field_, value)
            elif lowered in ("location", "content-location", "referer", "link", "refresh"):
                if not self.formats(field_, value):
                    for m in _URL.finditer(value):
                        self.url(field_, m[0], formats_done=True)
            else:
                self.named(field_, name, value, "header")

    def authorization(self, field_: str, value: str) -> None:
        if self.formats(field_, value):
            return
        scheme, _, credentials = value.strip().partition(" ")
        if not credentials:
            scheme, credentials = "", scheme
        if placeholder(credentials, self.placeholders) or trivial(credentials, plain_words=False):
            return
        if "=" in credentials and "," in credentials:  # Digest, AWS4: name=value, ...
            for item in credentials.split(","):
                name, _, val = item.strip().partition("=")
                val = val.strip('"')
                if name.lower() in ("signature", "response", "credential", "oauth_signature"):
                    continue  # derived from the secret, or the key's public id
                if secret_name(name, names=self.names) == STRONG_NAME and not placeholder(
                    val, self.placeholders
                ):
                    self.add(f"{field_}.{name}", val, "secret in Authorization")
            return
        self.add(field_, credentials, f"{scheme or 'credentials'} credentials not redacted")

    def cookies(self, field_: str, value: str, response: bool) -> None:
        pairs = value.split(";")[:1] if response else value.split(";")
        for pair in pairs:
            name, sep, cookie = pair.strip().partition("=")
            if not sep:
                continue
            where = f"{field_}.{name}"
            if self.formats(where, unquote(cookie)):
                continue
            parts = set(words(name))
            if name.lower() in _COOKIE_NOISE or placeholder(cookie, self.placeholders):
                continue
            strength = secret_name(name, COOKIE_WORDS, self.names)
            if parts & COOKIE_WORDS and not parts & NOT:
                strength = STRONG_NAME
            if strength == STRONG_NAME and not trivial(unquote(cookie)):
                self.add(where, cookie, "session cookie not redacted")

    def body(self, prefix: str, raw: bytes, headers: Headers, depth: int = 0) -> None:
        if not raw:
            return
        # a bomb is read as far as MAX_DECODED; a body not in its coding, as it is
        data = decode_body(raw, header(headers, "content-encoding"), MAX_DECODED, partial=True)[0]
        ctype = (header(headers, "content-type") or "").lower()
        if "multipart/" in ctype and "boundary=" in ctype and depth < MAX_NESTING:
            self.multipart(prefix, data, ctype, depth)
            return
        text = data.decode("utf-8", "replace")
        if "\ufffd" in text[:4096] and text.count("\ufffd") > len(text) // 20:
            return  # binary: images, archives
        if "x-www-form-urlencoded" in ctype or (
            not ctype and "=" in text and " " not in text[:4096] and text[:1] not in "{[<"
        ):
            for name, value in parse_qsl(text, keep_blank_values=True):
                self.named(f"{prefix}.{name}", name, value, "form field")
            return
        doc = json_body(text, sniff="json" not in ctype)
        if doc is not NOT_JSON and doc is not None:
            self.json(prefix, doc)
            return
        self.text(prefix, text)

    def multipart(self, prefix: str, data: bytes, ctype: str, depth: int = 0) -> None:
        boundary = ctype.split("boundary=", 1)[1].split(";")[0].strip().strip('"').encode()
        if not boundary:
            return
        for n, chunk in enumerate(data.split(b"--" + boundary)[1:]):
            if chunk.startswith(b"--"):
                break
            head, _, body = chunk.strip(b"\r\n").partition(b"\r\n\r\n")
            head_text = head.decode("latin-1")
            m = re.search(r'\bname="([^"\r\n]{1,200})"', head_text)
            name = m[1] if m else str(n)
            part_type = re.search(r"(?im)^content-type:\s*([^\r\n]{1,200})", head_text)
            hdrs = [("Content-Type", part_type[1])] if part_type else []
            if part_type and ("json" in part_type[1].lower() or "text" in part_type[1].lower()):
                self.body(f"{prefix}.{name}", body, hdrs, depth + 1)
            elif not re.search(r'\bfilename="', head_text):
                self.named(f"{prefix}.{name}", name, body.decode("utf-8", "replace"), "form field")
            else:
                self.body(f"{prefix}.{name}", body, hdrs, depth + 1)

    def json(self, prefix: str, doc: object) -> None:
        stack: list[tuple[str, list[str], object]] = [(prefix, [], doc)]
        while stack:
            where, keys, node = stack.pop()
            if isinstance(node, dict):
                for key, value in node.items():
                    stack.append((f"{where}.{key}", [*keys[-2:], str(key)], value))
            elif isinstance(node, list):
                for i, value in enumerate(node):
                    stack.append((f"{where}.{i}", keys, value))
            elif isinstance(node, str) and node:
                self.leaf(where, keys, node)

    def leaf(self, where: str, keys: list[str], value: str) -> None:
        name = keys[-1] if keys else ""
        if name.lower() in ("id", "value", "key", "secret") and len(keys) > 1:
            name = f"{keys[-2]}_{name}"  # {"session": {"id": ...}}, {"api_key": {"value": ...}}
        before = len(self.out)
        self.named(where, name, value, "field")
        if len(self.out) == before and len(value) > 24 and not trivial(value):
            doc = json_body(value)
            if doc is not NOT_JSON:
                self.json(where, doc)
                return
            if " " in value or "=" in value or "<" in value:
                self.text(where, value)


def _str(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _secret_part(value: str) -> str:
    """`Bearer abc` -> `abc`: the scheme is not the secret."""
    scheme, sep, rest = value.strip().partition(" ")
    if sep and scheme.lower() in ("bearer", "basic", "token", "bot", "key", "apikey") and rest:
        return rest.strip()
    return value


def _handle(segment: str) -> bool:
    """A 32+ hex handle (a session id, a download token) as it appears in a path."""
    return len(segment) >= 32 and bool(_HEX.fullmatch(segment)) and "-" not in segment


def _low_variety(secret: str) -> bool:
    """`sk_live_000000000000000000000000`, `ghp_aaaa...`: an example, not a key."""
    tail = secret[-16:]
    return len(set(tail)) <= 3
