"""One typed settings object, built from a YAML file and then overridden by flags.

Every section is a frozen dataclass; `load_config` walks the file against the dataclass fields,
so an unknown or mistyped key is reported with its dotted name and the file it came from.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .regex import compile_guarded

try:  # libyaml when present: same safety, much faster
    SafeLoader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    SafeLoader = yaml.SafeLoader

DEFAULT_CONFIG_FILE = "replayproxy.yaml"


class RecordMode(enum.StrEnum):
    """What a session does with its cassette, as vcrpy names it (the strings users type)."""

    ONCE = "once"  # record when the cassette does not exist, else replay it
    NEW_EPISODES = "new_episodes"  # replay what matches, record what does not
    ALL = "all"  # record everything again
    NONE = "none"  # only replay


#: Names users type beyond vcrpy's: `replay` (the default of every face) and `record`
#: (pytest-recording's habit).
MODE_ALIASES = {"replay": RecordMode.NONE, "record": RecordMode.ONCE}


def record_mode(name: str) -> RecordMode:
    """The mode `name` stands for: a RecordMode's value or one of MODE_ALIASES."""
    if isinstance(name, str) and name in MODE_ALIASES:
        return MODE_ALIASES[name]
    try:
        return RecordMode(name)
    except ValueError:
        known = ", ".join([*MODE_ALIASES, *RecordMode])
        raise ConfigError(f"unknown mode {name!r} (one of: {known})") from None


@dataclass(frozen=True)
class SignatureConfig:
    """How webhooks are signed: one of the named schemes, or `custom` with templates."""

    scheme: str = "hmac-sha256"
    header: str | None = None
    format: str | None = None
    signed_payload: str | None = None
    encoding: str = "hex"
    timestamp_header: str | None = None
    id_header: str | None = None
    tolerance: int = 300


@dataclass(frozen=True)
class MatchConfig:
    headers: tuple[str, ...] = ()
    ignore_query: tuple[str, ...] = ()
    ignore_body_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class RedactConfig:
    headers: tuple[str, ...] = ()
    query: tuple[str, ...] = ()
    body_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckConfig:
    """`replayproxy check`: accepted findings (fingerprints) and extra placeholder values."""

    allow: tuple[str, ...] = ()
    placeholders: tuple[str, ...] = ()


@dataclass(frozen=True)
class VariablesConfig:
    """Values that change from run to run, beyond those found by their shape."""

    body_fields: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    query: tuple[str, ...] = ()
    path_regex: tuple[str, ...] = ()
    pin: tuple[str, ...] = ()


@dataclass(frozen=True)
class WebhooksConfig:
    """Webhooks both ways. `signature` is what the app verifies (and what replayproxy signs for
    it); `upstream_signature` is what the upstream sends (verified at the ingress while
    recording), the same as `signature` unless given. A secret variable list is key rotation:
    the first variable holds the current secret, the others earlier ones still accepted."""

    callback_fields: tuple[str, ...] = ("callback_url", "webhook_url", "callbackUrl", "webhookUrl")
    forward_to: str | None = None
    upstream_secret_env: tuple[str, ...] = ("CAMBER_WEBHOOK_SECRET",)
    local_secret_env: tuple[str, ...] = ("WEBHOOK_SECRET",)
    signature: SignatureConfig = field(default_factory=SignatureConfig)
    upstream_signature: SignatureConfig | None = None
    attempts: int = 5
    backoff: float = 0.05
    timeout: float = 10.0
    # replay: hosts beyond the app's callback URLs, forward_to, --webhook-url and loopback
    allow_hosts: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ("POST",)  # others are sent as POST
    keep_headers: tuple[str, ...] = ()  # recorded headers replayed beyond the kept ones

    def __post_init__(self) -> None:
        # One name is a list of one, whether it came from a file or from Python.
        for name in ("upstream_secret_env", "local_secret_env"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        # Header names are compared lowercased wherever a webhook is sent.
        object.__setattr__(self, "keep_headers", tuple(h.lower() for h in self.keep_headers))

    @property
    def upstream_scheme(self) -> SignatureConfig:
        """How the upstream signs: `upstream_signature`, else `signature`."""
        return self.upstream_signature or self.signature


@dataclass(frozen=True)
class DiffConfig:
    ignore: tuple[str, ...] = ()  # fields `diff` drops, as it prints them: response.body.x


@dataclass(frozen=True)
class ExpectConfig:
    """`vary.expect`: globs of variant names the app must survive, and those it may fail
    (a name matching both may fail)."""

    survive: tuple[str, ...] = (
        "recorded",
        "webhook-*-duplicate",
        "webhooks-reordered",
        "webhook-*-sender-retry",
        "interaction-*-503-once",
        "interaction-*-429",
        "interaction-*-slow",
    )
    may_fail: tuple[str, ...] = ("webhook-*-lost",)


@dataclass(frozen=True)
class VaryConfig:
    expect: ExpectConfig = field(default_factory=ExpectConfig)


@dataclass(frozen=True)
class Config:
    listen: str = "127.0.0.1:8080"
    upstream: str | None = None
    export_env: str | None = None
    unmatched_status: int = 502
    upstream_timeout: float = 30.0
    max_body_size: int = 64 * 1024 * 1024
    max_header_size: int = 64 * 1024  # request line, any header, all headers: else 431
    head_timeout: float = 10.0  # seconds to send a whole request head
    idle_timeout: float = 60.0  # seconds a kept-alive connection may sit idle
    max_connections: int = 0  # 0: as many as the file limit leaves room for
    secret_env: tuple[str, ...] = ("CAMBER_API_KEY",)
    match: MatchConfig = field(default_factory=MatchConfig)
    redact: RedactConfig = field(default_factory=RedactConfig)
    variables: VariablesConfig = field(default_factory=VariablesConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    diff: DiffConfig = field(default_factory=DiffConfig)
    vary: VaryConfig = field(default_factory=VaryConfig)
    check: CheckConfig = field(default_factory=CheckConfig)

    def replace(self, **changes: Any) -> Config:
        """A copy with top-level fields changed; `None` means 'not given' and is skipped."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def load_config(path: str | Path | None = None) -> Config:
    """Read `path`, else ./replayproxy.yaml when present, else the defaults."""
    if path is None:
        if not Path(DEFAULT_CONFIG_FILE).exists():
            return Config()
        path = DEFAULT_CONFIG_FILE
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(
            f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    if data is None:
        return Config()
    config = build(Config, data, str(path))
    for n, pattern in enumerate(config.variables.path_regex):  # refused now, with the file
        try:
            compile_guarded(pattern, f"'variables.path_regex[{n}]'")
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return config


def build(cls: type, data: Any, source: str, prefix: str = "") -> Any:
    """Build dataclass `cls` from plain data, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix or 'config'} must be a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"{source}: unknown key '{dotted}' (known here: {known})")
        values[key] = _coerce(hints[key], value, source, dotted)
    return cls(**values)


def _coerce(hint: Any, value: Any, source: str, dotted: str) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return build(hint, value, source, dotted + ".")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, source, dotted)
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: '{dotted}' must be a list of strings, got {_kind(value)}")
        return tuple(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: '{dotted}' must be {hint.__name__}, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]


def env_secrets(
    names: str | Sequence[str] | None, environ: Mapping[str, str] | None = None
) -> list[str]:
    """The secrets in the environment variables `names`, in order: each variable's exact value
    (no splitting, no trimming: a secret is an opaque string, commas and spaces included), unset
    or empty ones skipped, repeats dropped. The one place secrets are read; only from the
    environment, never from flags or files."""
    env = os.environ if environ is None else environ
    listed = [names] if isinstance(names, str) else list(names or ())
    values: dict[str, None] = {}  # a dict keeps the order and drops repeats
    for name in listed:
        value = env.get(name, "") if name else ""
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # os.environ's stand-ins for bytes that are not UTF-8
            raise ConfigError(
                f"the environment variable {name} is not valid UTF-8: a secret is text, signed "
                "and verified as its UTF-8 bytes, as the providers do"
            ) from None
        if value:
            values[value] = None
    return list(values)


def env_names(names: str | Sequence[str] | None) -> str:
    """The variables `names`, for a message: `A` or `A, B`."""
    listed = [names] if isinstance(names, str) else list(names or ())
    return ", ".join(n for n in listed if n) or "(none)"


def parse_listen(listen: str) -> tuple[str, int]:
    """'HOST:PORT' or ':PORT' or 'PORT' -> (host, port); the host defaults to loopback."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"listen: '{listen}' is not HOST:PORT") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"listen: port {number} is out of range")
    return host, number
