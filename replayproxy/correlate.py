"""Which exchange caused a recorded webhook, and where it arrived in its conversation. Pure.

- The webhook's *ids* are the id-like values its JSON body carries (`id_like`): integers (not
  booleans, not 0..99, which are counts and flags far more often than ids), and strings that
  contain a digit or have a minted shape. Plain words such as `COMPLETED` never count. (`diff`
  uses the variant `named_id`, where a field's name such as `job_id` vouches for its value.)
- Its *cause* is the earliest exchange whose request (URI path segments, query values, JSON body)
  or response JSON carries one of those ids.
- Its *conversation* is every exchange carrying one of those ids (the submit, its polls, the
  download): other jobs' traffic is not part of it.
- *after* is the last exchange of the conversation that completed before the webhook arrived;
  *delay* the seconds between that completion and the arrival.

Times are the interactions' and the webhook's `at` and the interactions' `duration`, in seconds
since the start of the recording session.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .bodies import NOT_JSON, json_body
from .cassette import Interaction
from .variables import shape


@dataclass(frozen=True, slots=True)
class Correlation:
    cause: int | None  # 1-based interaction numbers
    after: int | None
    delay: float


def _leaves(data: Any) -> Iterator[Any]:
    if isinstance(data, dict):
        for value in data.values():
            yield from _leaves(value)
    elif isinstance(data, list):
        for value in data:
            yield from _leaves(value)
    else:
        yield data


#: A field name that says its value is an id: `id`, `job_id`, `jobId`, `ID`.
ID_NAME = re.compile(r"(^|_)id$|Id$|^id$", re.IGNORECASE)


def id_like(value: Any) -> str | None:
    """The value as an id string, or None when it cannot be an id: the value alone decides."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value) if abs(value) >= 100 else None
    if isinstance(value, str) and 3 <= len(value) <= 2048:
        if any(c.isdigit() for c in value) or shape(value):
            return value
    return None


def named_id(name: str, value: Any) -> str | None:
    """The variant for a value under a field whose name says id (`ID_NAME`): the name vouches,
    so any string or integer of three characters or more is one (`-12`, `"abc"`), but not a
    boolean or a tiny number like 1. None for any value under another name."""
    if not name or not ID_NAME.search(name):
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool) and len(str(value)) >= 3:
        return str(value)
    return None


def webhook_ids(body: bytes) -> set[str]:
    data = json_body(body)
    if data is NOT_JSON:
        return set()
    return {i for i in map(id_like, _leaves(data)) if i is not None}


def _values(data: Any) -> set[str]:
    return {str(v) for v in _leaves(data) if not isinstance(v, bool) and v is not None}


def request_values(item: Interaction) -> set[str]:
    """Every value an exchange's request carries where an id could be."""
    parts = urlsplit(item.request.uri)
    values = {unquote(s) for s in parts.path.split("/") if s}
    values.update(v for _, v in parse_qsl(parts.query, keep_blank_values=True))
    data = json_body(item.request.body)
    if data is not NOT_JSON:
        values |= _values(data)
    return values


def exchange_values(item: Interaction) -> set[str]:
    """Every value an exchange carries where an id could be."""
    values = request_values(item)
    data = json_body(item.response.body)
    if data is not NOT_JSON:
        values |= _values(data)
    return values


def _ids(values: Iterator[Any] | set[str]) -> set[str]:
    return {i for i in map(id_like, values) if i is not None}


def conversations(interactions: Sequence[Interaction]) -> list[str | None]:
    """The upstream id each exchange is about (its conversation: a job, say), or None.

    An upstream id is an id-like value an answer introduced (the app had not sent it before)
    and the app later sent back, such as the `job_id` a submit returned and the polls carry in
    their path. An exchange belongs to the earliest-introduced upstream id its request carries,
    else to the one its answer carries when it carries exactly one (the submit that minted it);
    a listing of several jobs belongs to none.
    """
    introduced: dict[str, int] = {}
    own: set[str] = set()  # what the app sent before any answer did: its own values
    anchors: dict[str, int] = {}
    sent_ids, got_ids = [], []
    for index, item in enumerate(interactions):
        sent = _ids(request_values(item))
        for value in sent:
            if value in introduced:
                anchors.setdefault(value, introduced[value])
            else:
                own.add(value)
        data = json_body(item.response.body)
        got = _ids(_leaves(data)) if data is not NOT_JSON else set()
        for value in got - own:
            introduced.setdefault(value, index)
        sent_ids.append(sent)
        got_ids.append(got)
    out: list[str | None] = []
    for sent, got in zip(sent_ids, got_ids, strict=True):
        mine = sorted((anchors[v], v) for v in sent if v in anchors)
        if mine:
            out.append(mine[0][1])
            continue
        answered = {v for v in got if v in anchors}
        out.append(answered.pop() if len(answered) == 1 else None)
    return out


def _end(item: Interaction) -> float | None:
    if item.at is None:
        return None
    return float(item.at) + float(item.duration or 0.0)


def exchanges_of(
    interactions: Sequence[Interaction],
    body: bytes,
    *,
    first: int = 0,
    values: Sequence[set[str]] | None = None,
) -> list[int]:
    """The webhook's conversation: the 1-based numbers of the exchanges carrying one of its ids."""
    ids = webhook_ids(body)
    if not ids:
        return []
    return [
        index + 1
        for index in range(first, len(interactions))
        if ids & (values[index] if values is not None else exchange_values(interactions[index]))
    ]


def correlate(
    interactions: Sequence[Interaction],
    body: bytes,
    at: float | None,
    *,
    first: int = 0,
    hint: int | None = None,
    values: Sequence[set[str]] | None = None,
) -> Correlation:
    """Correlate one webhook with `interactions[first:]` (earlier ones belong to another session).

    `hint` (1-based) is the exchange to fall back on when no id is shared, e.g. the one that
    carried the callback URL the webhook arrived on. `values` may hold precomputed
    `exchange_values` for every interaction, to correlate many webhooks cheaply.
    """
    conversation = [n - 1 for n in exchanges_of(interactions, body, first=first, values=values)]
    if not conversation:
        if hint is None:
            return Correlation(None, None, 0.0)
        conversation = [hint - 1]
    cause = conversation[0] + 1
    after, end_after = None, None
    if at is not None:
        for index in conversation:
            end = _end(interactions[index])
            if end is not None and end <= at and (end_after is None or end >= end_after):
                after, end_after = index + 1, end
    delay = max(0.0, at - end_after) if at is not None and end_after is not None else 0.0
    return Correlation(cause, after, round(delay, 6))
