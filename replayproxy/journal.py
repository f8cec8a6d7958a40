"""Durability while recording: an append-only JSON-lines journal beside the cassette.

`CASSETTE.journal` holds one header line (the session: what it extends, the cassette's sha256
when it started, its pid, its metadata), then one line per finished exchange or received
webhook, each written whole with a single `write` on an O_APPEND descriptor, so a `kill -9`
loses at most what was in flight and concurrent exchanges never interleave. The recorder holds
an exclusive flock on it for the session (`claim`): one recorder per cassette. At a clean stop
the recorder assembles the cassette, saves it atomically and deletes the journal; when a session
died instead, `recover` saves it: into the cassette while that is still the file the session
started from, else beside it. Every other command goes through `open_cassette`, which refuses a
cassette with a journal beside it (`guard`).

`assemble` is the one place a recorded session becomes a cassette: webhooks are correlated with
their cause (see correlate.py), and variables are detected by shape (see variables.py).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .cassette import (
    Cassette,
    Interaction,
    Request,
    Response,
    Webhook,
    interaction_meta,
    load,
    save,
)
from .config import Config
from .correlate import correlate, exchange_values
from .errors import CassetteError
from .matching import normaliser
from .variables import detect

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; one recorder per cassette is on you
    fcntl = None  # type: ignore[assignment]

SUFFIX = ".journal"
UNKNOWN = "unknown"


def journal_path(cassette: str | Path) -> Path:
    path = Path(cassette)
    return path.with_name(path.name + SUFFIX)


# ---------------------------------------------------------------------------------------------
# the session, and the cassette it becomes


@dataclass(slots=True)
class Session:
    """What one recording session produced, on top of `base_*` items kept from the old file."""

    meta: dict[str, Any] = field(default_factory=dict)
    base_interactions: int = 0
    base_webhooks: int = 0
    interactions: list[Interaction] = field(default_factory=list)
    webhooks: list[Webhook] = field(default_factory=list)
    hints: list[int | None] = field(default_factory=list)  # per webhook: fallback cause
    #: the cassette file as the session found it: its sha256, None when there was none, or
    #: UNKNOWN (a journal from before this was noted); recovery writes into the cassette only
    #: while it is still that file
    origin: str | None = None
    replaces: bool = False  # `all` over an existing file: only a clean stop may replace it
    saved: bool = False  # the cassette was saved; only removing the journal was left to do


def assemble(base: Cassette | None, session: Session, config: Config) -> Cassette:
    """The cassette: base items, then the session's; webhooks correlated, variables detected."""
    old_interactions = base.interactions[: session.base_interactions] if base else []
    old_webhooks = base.webhooks[: session.base_webhooks] if base else []
    meta = {**(base.meta if base else {}), **session.meta}
    meta.pop("variables_detected", None)
    cassette = Cassette(
        interactions=[*old_interactions, *session.interactions],
        webhooks=list(old_webhooks),
        meta=meta,
    )
    first = len(old_interactions)
    values = [exchange_values(i) for i in cassette.interactions] if session.webhooks else []
    for hook, hint in zip(session.webhooks, session.hints, strict=True):
        found = correlate(
            cassette.interactions, hook.body, hook.at, first=first, hint=hint, values=values
        )
        cassette.webhooks.append(
            Webhook(
                body=hook.body,
                headers=list(hook.headers),
                method=hook.method,
                path=hook.path,
                target=hook.target,
                cause=found.cause,
                after=found.after,
                delay=found.delay,
                at=hook.at,
                event_id=hook.event_id,
            )
        )
    normalise = normaliser(cassette, config)
    cassette.variables = detect(cassette, normalise.rules, normalise.positions)
    cassette.meta["variables_detected"] = True
    return cassette


# ---------------------------------------------------------------------------------------------
# lines


def _b(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def interaction_line(item: Interaction) -> dict[str, Any]:
    req, res = item.request, item.response
    return {
        "kind": "interaction",
        "request": {
            "method": req.method,
            "uri": req.uri,
            "headers": req.headers,  # pairs: JSON arrays
            "body": _b(req.body),
        },
        "response": {
            "status": res.status,
            "reason": res.reason,
            "headers": res.headers,
            "body": _b(res.body),
        },
        "meta": interaction_meta(item),
    }


def webhook_line(hook: Webhook, hint: int | None) -> dict[str, Any]:
    return {
        "kind": "webhook",
        "method": hook.method,
        "path": hook.path,
        "headers": [list(h) for h in hook.headers],
        "body": _b(hook.body),
        "target": hook.target,
        "at": hook.at,
        "event_id": hook.event_id,
        "hint": hint,
    }


def _headers(data: Any) -> list[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in data]


def _interaction(data: dict[str, Any]) -> Interaction:
    req, res = data["request"], data["response"]
    meta = dict(data.get("meta") or {})
    return Interaction(
        Request(req["method"], req["uri"], _headers(req["headers"]), _unb(req["body"])),
        Response(
            int(res["status"]), res.get("reason") or "", _headers(res["headers"]), _unb(res["body"])
        ),
        meta,
        _seconds(meta.pop("at", None)),
        _seconds(meta.pop("duration", None)),
    )


def _seconds(value: Any) -> float | None:
    """A time the recorder wrote; anything else is an unknown time, the exchange kept."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _webhook(data: dict[str, Any]) -> Webhook:
    return Webhook(
        body=_unb(data["body"]),
        headers=_headers(data["headers"]),
        method=data.get("method") or "POST",
        path=data.get("path") or "/",
        target=data.get("target"),
        at=data.get("at"),
        event_id=data.get("event_id"),
    )


# ---------------------------------------------------------------------------------------------
# writing


def _encode(record: dict[str, Any]) -> bytes:
    """One journal line. orjson takes a few us where json takes 8 (record mode writes one line
    per exchange); header text that held undecodable bytes (lone surrogates) needs json."""
    try:
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        return (json.dumps(record, separators=(",", ":")) + "\n").encode("ascii")


class Journal:
    """Append-only; every record is one `os.write` of one line on an O_APPEND descriptor."""

    def __init__(self, path: str | Path, session: Session, fd: int | None = None):
        """`fd`: the journal already open and locked (see `claim`), emptied here; else the file
        is created (or emptied) without a lock."""
        self.path = Path(path)
        try:
            if fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
            else:
                os.ftruncate(fd, 0)
            self._fd: int | None = fd
        except OSError as exc:
            raise CassetteError(
                f"{self.path}: cannot write the recording journal: {exc.strerror or exc}"
            ) from None
        self._size = 0  # bytes whole lines take: where a failed write is cut back to
        try:
            self._write(
                {
                    "kind": "session",
                    "meta": session.meta,
                    "base_interactions": session.base_interactions,
                    "base_webhooks": session.base_webhooks,
                    "origin": session.origin,
                    "replaces": session.replaces,
                    "pid": os.getpid(),
                }
            )
        except OSError as exc:
            self.close()
            raise CassetteError(
                f"{self.path}: cannot write the recording journal: {exc.strerror or exc}"
            ) from None

    def _write(self, record: dict[str, Any]) -> None:
        if self._fd is None:
            raise ValueError("journal is closed")
        data = _encode(record)
        before = self._size
        try:
            written = os.write(self._fd, data)
            while written < len(data):  # a full disk writes part, then fails
                written += os.write(self._fd, data[written:])
        except OSError:
            # no torn line in the middle of the journal: the next record starts clean
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, before)
            raise
        self._size = before + len(data)

    def interaction(self, item: Interaction) -> None:
        self._write(interaction_line(item))

    def webhook(self, hook: Webhook, hint: int | None) -> None:
        self._write(webhook_line(hook, hint))

    def saved(self) -> None:
        """The cassette holds this session now: a crash before the journal goes recovers
        nothing twice."""
        with contextlib.suppress(OSError):
            self._write({"kind": "saved"})

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# reading


def read(path: str | Path) -> Session:
    """The session a journal holds; a torn last line (the write in flight at a crash) is skipped."""
    session = Session(origin=UNKNOWN)
    damaged: CassetteError | None = None
    with open(path, "rb") as fh:  # line by line: the file can be as large as the cassette
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            if damaged is not None:
                raise damaged  # a damaged line that is not the last one
            try:
                record = _decode(raw)
                kind = record["kind"]
                if kind == "session":
                    session.meta = dict(record.get("meta") or {})
                    session.base_interactions = int(record.get("base_interactions") or 0)
                    session.base_webhooks = int(record.get("base_webhooks") or 0)
                    session.origin = record.get("origin", UNKNOWN)
                    session.replaces = bool(record.get("replaces"))
                elif kind == "interaction":
                    session.interactions.append(_interaction(record))
                elif kind == "webhook":
                    session.webhooks.append(_webhook(record))
                    session.hints.append(record.get("hint"))
                elif kind == "saved":
                    session.saved = True
            except (ValueError, KeyError, TypeError) as exc:
                # the last line may be the one in flight when the process died: skipped
                damaged = CassetteError(f"{path}:{number}: damaged journal line: {exc}")
    return session


def _decode(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)  # what only json wrote: escaped lone surrogates in header text


def fingerprint(path: str | Path) -> str | None:
    """The sha256 of a cassette file, None when there is none: what a session started from."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CassetteError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return digest.hexdigest()


def _holder(jpath: Path) -> str:
    """The pid a journal's header names, for messages ("?" before the header is written)."""
    try:
        with open(jpath, "rb") as fh:
            pid = _decode(fh.readline()).get("pid")
    except (OSError, ValueError, AttributeError):
        return "?"
    return str(pid) if isinstance(pid, int) else "?"


def _count(jpath: Path) -> tuple[int, int] | None:
    """(exchanges, webhooks) a journal holds, counted by line without decoding bodies; None
    when its session was saved (only removing the journal was left to do)."""
    exchanges = webhooks = 0
    with open(jpath, "rb") as fh:
        for raw in fh:
            if raw.startswith(b'{"kind":"interaction"'):
                exchanges += 1
            elif raw.startswith(b'{"kind":"webhook"'):
                webhooks += 1
            elif raw.startswith(b'{"kind":"saved"'):
                return None
    return exchanges, webhooks


# ---------------------------------------------------------------------------------------------
# one recorder per cassette, and recovery


@dataclass(frozen=True, slots=True)
class Recovered:
    interactions: int = 0
    webhooks: int = 0
    into: Path | None = None  # the file they went to
    beside: bool = False  # into a file beside the cassette, which was left as it was

    @property
    def total(self) -> int:
        return self.interactions + self.webhooks

    def describe(self, jpath: Path, cassette: Path) -> str:
        """The one stderr line that says what recovery did."""
        head = (
            f"recovered {self.interactions} exchanges and {self.webhooks} webhooks from {jpath} "
            "(a session that ended without saving)"
        )
        if self.beside:
            return f"{head} into {self.into}, beside {cassette}, which is unchanged"
        if not self.total:
            return f"{head}: it held nothing; removed it"
        return f"{head} into {self.into}"


class Claim:
    """This process's hold on `CASSETTE.journal`: an exclusive advisory lock (flock) on it for
    the whole session, so a second recorder is refused instead of taking a live journal for a
    dead one. The kernel drops the lock when the process dies, however it dies, so a stale
    journal is simply one nobody holds."""

    def __init__(self, cassette: Path, fd: int, recovered: Recovered | None):
        self.cassette = cassette
        self.path = journal_path(cassette)
        self.fd: int | None = fd
        self.recovered = recovered

    def take(self) -> int:
        """The locked descriptor, handed to the Journal (which closes it, and so unlocks)."""
        assert self.fd is not None
        fd, self.fd = self.fd, None
        return fd

    def release(self) -> None:
        """Unlock without recording: the empty journal file goes."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            if os.fstat(self.fd).st_size == 0:
                self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


def _lock(jpath: Path, cassette: Path, write: bool = True) -> int:
    """Open and lock the journal (`write`: for recording, created empty when missing); refuse
    while another process holds it."""
    while True:
        try:
            if write:
                jpath.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(jpath, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            else:
                fd = os.open(jpath, os.O_RDONLY)
        except OSError as exc:
            if not write and isinstance(exc, FileNotFoundError):
                return -1  # no journal: nothing to recover
            raise CassetteError(
                f"{jpath}: cannot write the recording journal: {exc.strerror or exc}"
            ) from None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CassetteError(
                f"{cassette} is being recorded by another replayproxy (pid {_holder(jpath)}, "
                f"holding {jpath}); one recorder per cassette: stop that one or record into "
                "another file"
            ) from None
        try:
            same = os.stat(jpath).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed it as we opened it (a clean stop): open it anew


def claim(cassette_path: str | Path, config: Config) -> Claim:
    """Lock the cassette's journal for a recording session; a journal a dead session left is
    recovered first (see `recover`), under the lock."""
    path = Path(cassette_path)
    jpath = journal_path(path)
    fd = _lock(jpath, path)
    try:
        recovered = None
        if os.fstat(fd).st_size:
            recovered = _recover(path, jpath, config)
            os.ftruncate(fd, 0)
            if not recovered.total:
                recovered = None  # it held nothing to save: nothing to say
        return Claim(path, fd, recovered)
    except BaseException:
        os.close(fd)
        raise


def recover(cassette_path: str | Path, config: Config) -> Recovered | None:
    """Save what a journal left by a session that died holds; None when there is none.

    Into the cassette when the cassette is still the file the session started from and the
    session was not a re-record (`all` over an existing file); else into a new file beside it
    (`NAME.recovered.yaml`), leaving the cassette as it is. The file is saved atomically before
    the journal goes, so a crash in between recovers again (never half). Refused while a
    recorder holds the journal; a disk that cannot take the file keeps the journal.
    """
    path = Path(cassette_path)
    jpath = journal_path(path)
    fd = _lock(jpath, path, write=False)
    if fd < 0:
        return None
    try:
        recovered = _recover(path, jpath, config) if os.fstat(fd).st_size else Recovered()
        try:
            jpath.unlink(missing_ok=True)
        except OSError as exc:  # saved; a second recovery would only write a copy beside it
            raise CassetteError(
                f"{jpath}: saved into {recovered.into or path}, but cannot remove the journal: "
                f"{exc.strerror or exc}; remove it by hand"
            ) from None
    finally:
        os.close(fd)
    return recovered


def _recover(path: Path, jpath: Path, config: Config) -> Recovered:
    session = read(jpath)
    if session.saved:  # the recorder saved the cassette and died before removing this
        return Recovered(into=path)
    recovered = Recovered(len(session.interactions), len(session.webhooks), path)
    if not recovered.total:
        return recovered
    now = fingerprint(path)
    if session.origin == UNKNOWN:  # an older journal: the old rule, but never over a file
        into_cassette = now is None or bool(session.base_interactions or session.base_webhooks)
    else:
        into_cassette = now == session.origin and not session.replaces
    base = None
    if into_cassette:
        if now is not None and (session.base_interactions or session.base_webhooks):
            base = load(path)
        target = path
    else:
        target = _beside(path)
        # only this session's items: what it was based on is in the cassette, unchanged
        shift = session.base_interactions
        session.hints = [h - shift if h is not None and h > shift else None
                         for h in session.hints]
        session.base_interactions = session.base_webhooks = 0
    try:
        save(assemble(base, session, config), target)
    except OSError as exc:
        raise CassetteError(
            f"{target}: cannot save the recovered session: {exc.strerror or exc}; {jpath} is "
            f"kept ({recovered.total} items): free the space or make the folder writable, then "
            f"run `replayproxy recover {path}`"
        ) from None
    return Recovered(recovered.interactions, recovered.webhooks, target, target != path)


def _beside(path: Path) -> Path:
    """`NAME.recovered.yaml` beside `NAME.yaml`, numbered when taken: never an existing file."""
    for n in range(1, 10_000):
        tag = "recovered" if n == 1 else f"recovered-{n}"
        candidate = path.with_name(f"{path.stem}.{tag}{path.suffix or '.yaml'}")
        if not candidate.exists():
            return candidate
    raise CassetteError(f"{path}: too many recovered files beside it; move some away")


# ---------------------------------------------------------------------------------------------
# every command that opens a cassette


def guard(cassette_path: str | Path) -> None:
    """Refuse a cassette with a journal beside it, naming it and the command that saves it: the
    cassette may lack a whole session, and replaying, checking or diffing it would hide that.
    (Recovering here instead would write files from commands that only read.)"""
    path = Path(cassette_path)
    jpath = journal_path(path)
    try:
        fd = os.open(jpath, os.O_RDONLY)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise CassetteError(
            f"{jpath}: cannot read the journal beside {path}: {exc.strerror}"
        ) from None
    try:
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CassetteError(
                f"{path} is being recorded right now by replayproxy pid {_holder(jpath)} "
                f"({jpath}); stop that recording first (Ctrl-C saves the cassette)"
            ) from None
        if os.fstat(fd).st_size == 0:
            return  # a recorder that died before writing anything: nothing to save
        counted = _count(jpath)
    finally:
        os.close(fd)
    if counted is None:
        return  # saved: the cassette is whole; the next recorder removes the journal
    exchanges, webhooks = counted
    raise CassetteError(
        f"{path}: {jpath} beside it holds a recording session that ended without saving "
        f"({exchanges} exchanges, {webhooks} webhooks); run `replayproxy recover {path}` to "
        "save it, then run this again"
    )


def open_cassette(path: str | Path) -> Cassette:
    """Load a cassette to replay, inspect, check, diff or send from: see `guard`."""
    guard(path)
    return load(path)
