"""Sign and verify webhooks in the sender's scheme, so replayed events pass the app's own check.

Every scheme is one `_Scheme` description (header, value template, signed-payload template,
encoding, key derivation, how to repeat a signature for key rotation); the named schemes are
fixed descriptions and `custom` builds one from the config. Only stripe and standard-webhooks
need their own header parsers, because their values are lists rather than a single template.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from .config import Config, SignatureConfig, env_names, env_secrets
from .errors import ConfigError, ReplayProxyError


class SignatureError(ReplayProxyError):
    """A webhook's signature headers are missing, malformed, stale, or match none of the secrets."""


SCHEMES: tuple[str, ...] = (
    "stripe",
    "standard-webhooks",
    "github",
    "slack",
    "hmac-sha256",
    "custom",
)
ENCODINGS = ("hex", "base64")
FORMAT_FIELDS = frozenset({"timestamp", "signature", "id"})
PAYLOAD_FIELDS = frozenset({"timestamp", "body", "id"})


@dataclass(frozen=True)
class _Parsed:
    timestamp: str | None
    id: str | None
    signatures: list[str]


@dataclass(frozen=True)
class _Scheme:
    header: str
    format: str
    payload: str
    encoding: str = "hex"
    timestamp_header: str | None = None
    id_header: str | None = None
    key: Callable[[str], bytes] = lambda secret: secret.encode("utf-8")
    repeat: str | None = None  # appended per extra secret; None: sign with the first secret only
    parse: Callable[[str, _Scheme], _Parsed] | None = None  # None: match `format` as a regex
    aliases: tuple[str, ...] = ()  # other names for the same headers (read, and dropped on re-sign)

    @property
    def carries_timestamp(self) -> bool:
        return self.timestamp_header is not None or "timestamp" in _fields(self.format)

    @property
    def uses_id(self) -> bool:
        return (
            self.id_header is not None
            or "id" in _fields(self.format)
            or "id" in _fields(self.payload)
        )


def _whsec_key(secret: str) -> bytes:
    """standard-webhooks keys are base64 after an optional `whsec_`, decoded as its library does."""
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw + "==")  # the library tolerates unpadded secrets
    except (binascii.Error, ValueError):
        raise ConfigError("standard-webhooks secret is not base64 (want whsec_<base64>)") from None
    if not key:
        raise ConfigError("standard-webhooks secret decodes to an empty key")
    return key


def _parse_stripe(value: str, scheme: _Scheme) -> _Parsed:
    """`t=<unix>,v1=<hex>[,v1=<hex>...]`, in any order; other schemes such as v0= are ignored."""
    timestamp, signatures = None, []
    for item in value.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed {scheme.header} header: {item!r} is not key=value")
        if key == "t" and timestamp is None:
            timestamp = val
        elif key == "v1":
            signatures.append(val)
    if timestamp is None:
        raise SignatureError(f"malformed {scheme.header} header: no t= timestamp")
    if not signatures:
        raise SignatureError(f"malformed {scheme.header} header: no v1= signature")
    return _Parsed(timestamp, None, signatures)


def _parse_standard(value: str, scheme: _Scheme) -> _Parsed:
    """Space-separated `v1,<base64>` entries; other versions (e.g. asymmetric v1a) are skipped."""
    entries = (entry.partition(",") for entry in value.split())
    signatures = [sig for version, _, sig in entries if version == "v1"]
    if not signatures:
        raise SignatureError(f"malformed {scheme.header} header: no v1,<signature> entry")
    return _Parsed(None, None, signatures)


def _parse_template(value: str, scheme: _Scheme) -> _Parsed:
    match = _template_regex(scheme.format, scheme.encoding).fullmatch(value)
    if match is None:
        raise SignatureError(
            f"malformed {scheme.header} header: {value[:80]!r} does not match {scheme.format!r}"
        )
    groups = match.groupdict()
    return _Parsed(groups.get("timestamp"), groups.get("id"), [groups["signature"]])


_NAMED: dict[str, _Scheme] = {
    "stripe": _Scheme(
        header="Stripe-Signature",
        format="t={timestamp},v1={signature}",
        repeat=",v1={signature}",
        payload="{timestamp}.{body}",
        parse=_parse_stripe,
    ),
    "standard-webhooks": _Scheme(
        header="webhook-signature",
        format="v1,{signature}",
        repeat=" v1,{signature}",
        payload="{id}.{timestamp}.{body}",
        encoding="base64",
        timestamp_header="webhook-timestamp",
        id_header="webhook-id",
        key=_whsec_key,
        parse=_parse_standard,
        # Svix's library prefers svix-* over webhook-*, so stale ones must be dropped on re-sign.
        aliases=("svix-signature", "svix-timestamp", "svix-id"),
    ),
    "github": _Scheme(
        header="X-Hub-Signature-256",
        format="sha256={signature}",
        payload="{body}",
        aliases=("X-Hub-Signature",),  # legacy SHA-1 header, signed with the upstream secret
    ),
    "slack": _Scheme(
        header="X-Slack-Signature",
        format="v0={signature}",
        payload="v0:{timestamp}:{body}",
        timestamp_header="X-Slack-Request-Timestamp",
    ),
}
_ALIAS_OF = {
    "svix-signature": "webhook-signature",
    "svix-timestamp": "webhook-timestamp",
    "svix-id": "webhook-id",
}


def _fields(template: str) -> list[str]:
    """Placeholder names in a str.format-style template; ConfigError if it is not one."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"signature template {template!r} is malformed: {exc}") from None
    names = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if spec or conversion:
            raise ConfigError(f"signature template {template!r}: write {{{name}}} plainly")
        names.append(name)
    return names


def _check_template(template: str, allowed: frozenset[str], required: str, what: str) -> None:
    names = set(_fields(template))
    unknown = names - allowed
    if unknown:
        known = ", ".join(f"{{{n}}}" for n in sorted(allowed))
        bad = ", ".join(f"{{{n}}}" for n in sorted(unknown))
        raise ConfigError(
            f"signature {what} {template!r}: unknown placeholder {bad} (known: {known})"
        )
    if required not in names:
        raise ConfigError(f"signature {what} {template!r} must contain {{{required}}}")


def signs_timestamp(config: SignatureConfig) -> bool:
    """Whether the scheme signs a timestamp (so a stale one can be detected at all)."""
    scheme = _scheme(config)
    return scheme.carries_timestamp and "timestamp" in _fields(scheme.payload)


def validate(config: SignatureConfig) -> None:
    """Reject a signature config that could not sign or verify, before any webhook arrives."""
    _scheme(config)


def _scheme(config: SignatureConfig) -> _Scheme:
    if config.scheme not in SCHEMES:
        raise ConfigError(
            f"unknown signature scheme {config.scheme!r} (known: {', '.join(SCHEMES)})"
        )
    if config.encoding not in ENCODINGS:
        raise ConfigError(
            f"unknown signature encoding {config.encoding!r} (known: {', '.join(ENCODINGS)})"
        )
    if config.tolerance < 0:
        raise ConfigError(f"signature tolerance must be >= 0 seconds, got {config.tolerance}")
    if config.scheme in _NAMED:
        return _NAMED[config.scheme]
    if config.scheme == "hmac-sha256":
        fmt = config.format or "sha256={signature}"
        _check_template(fmt, frozenset({"signature"}), "signature", "format")
        return _Scheme(config.header or "X-Signature", fmt, "{body}", config.encoding)
    if not config.header:
        raise ConfigError("signature scheme 'custom' needs a header name (signature.header)")
    scheme = _Scheme(
        header=config.header,
        format=config.format or "{signature}",
        payload=config.signed_payload or "{body}",
        encoding=config.encoding,
        timestamp_header=config.timestamp_header or None,
        id_header=config.id_header or None,
    )
    _check_template(scheme.format, FORMAT_FIELDS, "signature", "format")
    _check_template(scheme.payload, PAYLOAD_FIELDS, "body", "signed_payload")
    payload_fields = set(_fields(scheme.payload))
    if "timestamp" in payload_fields and not scheme.carries_timestamp:
        raise ConfigError(
            "signed_payload uses {timestamp} but neither format nor timestamp_header carries it"
        )
    if "id" in payload_fields and not (scheme.id_header or "id" in _fields(scheme.format)):
        raise ConfigError("signed_payload uses {id} but neither format nor id_header carries it")
    return scheme


@lru_cache(maxsize=64)
def _template_regex(template: str, encoding: str) -> re.Pattern[str]:
    """Turn a value template back into a regex with one named group per placeholder."""
    groups = {
        "signature": r"[0-9a-fA-F]+" if encoding == "hex" else r"[A-Za-z0-9+/]+={0,2}",
        "timestamp": r"[0-9]+",
        "id": r".+?",
    }
    pattern, seen = [], set()
    for literal, name, _, _ in string.Formatter().parse(template):
        pattern.append(re.escape(literal))
        if name is not None:
            pattern.append(f"(?P={name})" if name in seen else f"(?P<{name}>{groups[name]})")
            seen.add(name)
    return re.compile("".join(pattern), re.DOTALL)


def _render(template: str, values: Mapping[str, bytes]) -> bytes:
    """Fill a template as bytes, so a non-UTF-8 body is signed exactly as sent."""
    out = bytearray()
    for literal, name, _, _ in string.Formatter().parse(template):
        out += literal.encode("utf-8")
        if name is not None:
            out += values[name]
    return bytes(out)


def _encode(digest: bytes, encoding: str) -> str:
    return digest.hex() if encoding == "hex" else base64.b64encode(digest).decode("ascii")


def _decode(signature: str, encoding: str) -> bytes | None:
    if not signature:
        return None
    try:
        if encoding == "hex":
            return bytes.fromhex(signature)
        return base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return None


def _secrets(secrets: Sequence[str] | str) -> list[str]:
    """Unique secrets in order, each used exactly as given (spaces, commas and all); a lone
    string is one secret, not a sequence of characters."""
    unique = list(dict.fromkeys([secrets] if isinstance(secrets, str) else secrets))
    if not unique or not all(unique):
        raise ConfigError("no webhook secret to sign or verify with (empty secret)")
    return unique


def default_webhook_id(body: bytes) -> str:
    """A stable id from the body, so a retried delivery of the same event keeps its id."""
    return "msg_" + hashlib.sha256(body).hexdigest()[:24]


def sign(
    body: bytes,
    secrets: Sequence[str],
    config: SignatureConfig,
    *,
    timestamp: int,
    webhook_id: str | None = None,
) -> dict[str, str]:
    """The headers to add so the app's own verifier accepts `body`.

    Several secrets (key rotation) give several signatures where the scheme has a form for it
    (stripe: repeated `v1=`; standard-webhooks: space-separated `v1,<b64>` entries). github,
    slack, hmac-sha256 and custom carry one signature, so they are signed with the first secret
    only; `verify` still accepts any of the secrets. Without `webhook_id`, schemes that need an
    id get `default_webhook_id(body)`.
    """
    scheme = _scheme(config)
    keys = _secrets(secrets)
    if scheme.repeat is None:
        keys = keys[:1]
    ts = str(int(timestamp))
    msg_id = (webhook_id or default_webhook_id(body)) if scheme.uses_id else webhook_id
    values = {"body": body, "timestamp": ts.encode(), "id": (msg_id or "").encode("utf-8")}
    payload = _render(scheme.payload, values)
    sigs = [_encode(_mac(scheme.key(k), payload), scheme.encoding) for k in keys]
    value = _render(scheme.format, {**values, "signature": sigs[0].encode()})
    for sig in sigs[1:]:
        value += _render(scheme.repeat or "", {"signature": sig.encode()})
    headers = {scheme.header: value.decode("utf-8")}
    if scheme.timestamp_header:
        headers[scheme.timestamp_header] = ts
    if scheme.id_header and msg_id is not None:
        headers[scheme.id_header] = msg_id
    return headers


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    """Case-insensitive view of any mapping; the first of repeated names wins."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        out.setdefault(name.lower(), value)
    return out


def _header(headers: dict[str, str], name: str, scheme: _Scheme) -> str | None:
    key = name.lower()
    if key in headers:
        return headers[key].strip()
    for alias in scheme.aliases:
        if _ALIAS_OF.get(alias.lower()) == key and alias.lower() in headers:
            return headers[alias.lower()].strip()
    return None


def _require(headers: dict[str, str], name: str, scheme: _Scheme) -> str:
    value = _header(headers, name, scheme)
    if value is None:
        raise SignatureError(f"missing header {name}")
    return value


def _timestamp(raw: str, source: str) -> int:
    if not re.fullmatch(r"[0-9]{1,15}", raw):
        raise SignatureError(f"malformed timestamp in {source}: {raw[:40]!r} is not unix seconds")
    return int(raw)


def verify(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    config: SignatureConfig,
    *,
    now: int | None = None,
) -> None:
    """Raise SignatureError unless one signature in `headers` matches `body` under one secret.

    Header names are matched case-insensitively; the timestamp, for schemes that carry one, must
    be within `config.tolerance` seconds of `now` either way (a tolerance of 0 skips that check).
    A bad config or empty secret list raises ConfigError instead.
    """
    scheme = _scheme(config)
    keys = _secrets(secrets)
    lowered = _lower(headers)
    parsed = (scheme.parse or _parse_template)(_require(lowered, scheme.header, scheme), scheme)

    ts_raw, ts_source = parsed.timestamp, scheme.header
    if ts_raw is None and scheme.timestamp_header:
        ts_source = scheme.timestamp_header
        ts_raw = _require(lowered, ts_source, scheme)
    ts = _timestamp(ts_raw, ts_source) if ts_raw is not None else None
    msg_id = parsed.id
    if msg_id is None and scheme.id_header and "id" in _fields(scheme.payload):
        msg_id = _require(lowered, scheme.id_header, scheme)

    values = {
        "body": body,
        "timestamp": (ts_raw or "").encode("utf-8"),
        "id": (msg_id or "").encode("utf-8"),
    }
    payload = _render(scheme.payload, values)
    given = [d for d in (_decode(s, scheme.encoding) for s in parsed.signatures) if d is not None]
    if not given:
        raise SignatureError(f"malformed {scheme.header} header: no {scheme.encoding} signature")
    expected = [_mac(scheme.key(k), payload) for k in keys]
    if not any(hmac.compare_digest(e, g) for e in expected for g in given):
        raise SignatureError(
            f"no signature in {scheme.header} matched ({len(given)} signature(s), "
            f"{len(keys)} secret(s)): wrong secret or altered body"
        )

    if ts is not None and config.tolerance > 0:
        skew = ts - (int(time.time()) if now is None else now)
        if abs(skew) > config.tolerance:
            when = f"{-skew}s in the past" if skew < 0 else f"{skew}s in the future"
            raise SignatureError(
                f"timestamp {ts} is {when}, outside the {config.tolerance}s tolerance"
            )


def carries_timestamp(config: SignatureConfig) -> bool:
    """Whether the scheme sends a timestamp a receiver can check (so a stale one means something):
    stripe, standard-webhooks, slack, and custom with {timestamp} in its format or a
    timestamp_header; not github nor hmac-sha256."""
    return _scheme(config).carries_timestamp


def describe(config: SignatureConfig) -> str:
    """The scheme and the header it signs in, for messages: `stripe (Stripe-Signature)`."""
    return f"{config.scheme} ({_scheme(config).header})"


def id_header(config: SignatureConfig) -> str | None:
    """The header that carries the event id in this scheme, if any (e.g. webhook-id)."""
    return _scheme(config).id_header


def signature_header_names(config: SignatureConfig) -> frozenset[str]:
    """Lowercased names of the signature/timestamp/id headers, to drop stale ones before re-signing.

    Includes aliases a verifier might read instead (svix-* for standard-webhooks, GitHub's
    legacy X-Hub-Signature), since a stale one signed with the upstream secret would fail.
    """
    scheme = _scheme(config)
    names = [scheme.header, scheme.timestamp_header, scheme.id_header, *scheme.aliases]
    return frozenset(n.lower() for n in names if n)


def webhook_id(headers: Mapping[str, str], config: SignatureConfig) -> str | None:
    """The event id the sender put in the headers (to keep it across re-signing), else None."""
    scheme = _scheme(config)
    lowered = _lower(headers)
    if scheme.id_header:
        return _header(lowered, scheme.id_header, scheme) or None
    if "id" in _fields(scheme.format):
        value = _header(lowered, scheme.header, scheme)
        try:
            return _parse_template(value, scheme).id if value is not None else None
        except SignatureError:
            return None
    return None


# -- the secrets: read once from the environment, checked before the first webhook needs them


def local_secrets(config: Config, needed: bool) -> list[str]:
    """The app's webhook secrets: one per variable `webhooks.local_secret_env` lists (rotation:
    current first), each exactly as set (config.env_secrets reads them). `needed`: there are
    webhooks to sign, so none set is an error."""
    names = config.webhooks.local_secret_env
    secrets = env_secrets(names)
    if needed and not secrets:
        raise ReplayProxyError(
            f"the cassette has webhooks to sign, but the environment variable {env_names(names)} "
            "(webhooks.local_secret_env) is not set: export the app's webhook secret there"
        )
    return secrets


def check_secrets(secrets: Sequence[str], names: Sequence[str], config: SignatureConfig) -> None:
    """A malformed secret (e.g. not whsec_<base64>) fails now, naming its variables `names`,
    not with a 500 per webhook."""
    if secrets:
        try:
            sign(b"", secrets, config, timestamp=0)
        except ConfigError as exc:
            raise ConfigError(f"{env_names(names)}: {exc}") from None


def signed_with(config: Config, short: bool = False) -> str:
    """Which secret variable(s) and scheme sign the webhooks sent to the app, for the hint when
    the app refuses one: every variable, as a replay's 401/403 hint says it, or (`short`) the
    current one, as a recording's refusal line says it."""
    scheme = config.webhooks.signature.scheme
    if short:
        return f"${signing_env(config)} (scheme {scheme})"
    shown = ", ".join(f"${n}" for n in config.webhooks.local_secret_env if n)
    return (
        f"the secret in {shown or 'no variable'} (config webhooks.local_secret_env) and scheme "
        f"{scheme} (webhooks.signature.scheme)"
    )


def signing_env(config: Config) -> str:
    """The variable holding the current local secret, the first listed: it signs (the others
    are older ones, under rotation, that only some schemes sign with too)."""
    return next((n for n in config.webhooks.local_secret_env if n), "(none)")
