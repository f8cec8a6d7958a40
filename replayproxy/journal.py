"""Durability while recording: an append-only JSON-lines journal beside the cassette.

`CASSETTE.journal` holds one header line (the session: what it extends, its metadata), then one
line per finished exchange or received webhook, each written whole with a single `write` on an
O_APPEND descriptor, so a `kill -9` loses at most what was in flight and concurrent exchanges
never interleave. At a clean stop the recorder assembles the cassette, saves it atomically and
deletes the journal; when a session died instead, `recover` does the same from the journal.

`assemble` is the one place a recorded session becomes a cassette: webhooks are correlated with
their cause (see correlate.py), and variables are detected by shape (see variables.py).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .cassette import Cassette, Interaction, Request, Response, Webhook, load, save
from .config import Config
from .correlate import correlate, exchange_values
from .errors import CassetteError
from .matching import normaliser
from .variables import detect

SUFFIX = ".journal"


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
        "meta": item.meta,
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
    return Interaction(
        Request(req["method"], req["uri"], _headers(req["headers"]), _unb(req["body"])),
        Response(
            int(res["status"]), res.get("reason") or "", _headers(res["headers"]), _unb(res["body"])
        ),
        dict(data.get("meta") or {}),
    )


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

    def __init__(self, path: str | Path, session: Session):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600
            )
        except OSError as exc:
            raise CassetteError(
                f"{self.path}: cannot write the recording journal: {exc.strerror or exc}"
            ) from None
        self._size = 0  # bytes whole lines take: where a failed write is cut back to
        self._write(
            {
                "kind": "session",
                "meta": session.meta,
                "base_interactions": session.base_interactions,
                "base_webhooks": session.base_webhooks,
            }
        )

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

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# reading and recovery


def read(path: str | Path) -> Session:
    """The session a journal holds; a torn last line (the write in flight at a crash) is skipped."""
    session = Session()
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
                elif kind == "interaction":
                    session.interactions.append(_interaction(record))
                elif kind == "webhook":
                    session.webhooks.append(_webhook(record))
                    session.hints.append(record.get("hint"))
            except (ValueError, KeyError, TypeError) as exc:
                # the last line may be the one in flight when the process died: skipped
                damaged = CassetteError(f"{path}:{number}: damaged journal line: {exc}")
    return session


def _decode(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)  # what only json wrote: escaped lone surrogates in header text


@dataclass(frozen=True, slots=True)
class Recovered:
    interactions: int = 0
    webhooks: int = 0

    @property
    def total(self) -> int:
        return self.interactions + self.webhooks


def recover(cassette_path: str | Path, config: Config) -> Recovered | None:
    """Merge a journal left by a session that died into the cassette; None when there is none.

    The cassette is saved atomically before the journal is deleted, so running this twice (or
    crashing in between) gives the same file.
    """
    path = Path(cassette_path)
    jpath = journal_path(path)
    if not jpath.exists():
        return None
    session = read(jpath)
    recovered = Recovered(len(session.interactions), len(session.webhooks))
    if recovered.total:
        base = None
        if session.base_interactions or session.base_webhooks:
            base = load(path)
        save(assemble(base, session, config), path)
    jpath.unlink(missing_ok=True)
    return recovered
