"""`check --fix`: each flagged secret becomes the marker in the one place it was found.

Only the text `check` flagged changes, in the spellings it can have there (plain, JSON-escaped,
URL-encoded: `variables.TEXT_SPELLINGS`); a compressed body is decoded, changed and encoded
again with the same coding, and its Content-Length follows. Matching ignores what was recorded
as the marker (matching.py), so the cassette replays as before.
"""

from __future__ import annotations

from collections.abc import Iterable

from .cassette import Cassette, Headers, Request, Response, Webhook, header
from .check import Finding
from .coding import TooLarge, decode_body, encode_body
from .leaks import MAX_DECODED
from .redact import MARKER, _fix_length
from .variables import TEXT_SPELLINGS, spellings


def _replace(text: str, secret: str) -> str:
    # longest first: a spelling that holds a shorter one goes whole
    spelled = [s.decode("utf-8") for s in spellings(secret, TEXT_SPELLINGS)]
    for spelling in sorted(spelled, key=len, reverse=True):
        text = text.replace(spelling, MARKER)
    return text


def _replace_body(body: bytes, headers: Headers, secret: str) -> tuple[bytes, bool]:
    try:
        plain, coding = decode_body(body, header(headers, "content-encoding"), MAX_DECODED)
    except TooLarge:
        return body, False  # check read only its start: writing that back would lose the rest
    text = plain.decode("utf-8", "surrogateescape")
    new = _replace(text, secret)
    if new == text:
        return body, False
    data = new.encode("utf-8", "surrogateescape")
    return (encode_body(data, coding) if coding else data), True


def fix(cassette: Cassette, findings: Iterable[Finding]) -> list[tuple[Finding, bool]]:
    """Replace every secret finding's value in place; (finding, changed) for each."""
    results = []
    for finding in findings:
        if finding.check != "secret" or not finding.secret or not finding.part:
            continue
        results.append((finding, _apply(cassette, finding)))
    # a secret the recorder took for a minted value is listed as a variable too: it goes, and
    # its position (now the marker) is left out of matching instead
    fixed = {f.secret for f, changed in results if changed}
    cassette.variables = [v for v in cassette.variables if v.value not in fixed]
    return results


def _apply(cassette: Cassette, finding: Finding) -> bool:
    kind, number = finding.where.split(" ", 1)
    index = int(number) - 1
    part, secret = finding.part, finding.secret
    if kind == "interaction":
        item = cassette.interactions[index]
        req, res = item.request, item.response
        if part[0] == "uri":
            return _text(req, "uri", secret)
        if part[0] in ("request.header", "response.header"):
            headers = req.headers if part[0] == "request.header" else res.headers
            return _header(headers, int(part[1]), secret)
        return _body(req if part[0] == "request.body" else res, secret)
    hook = cassette.webhooks[index]
    if part[0] == "header":
        return _header(hook.headers, int(part[1]), secret)
    if part[0] == "body":
        return _body(hook, secret)
    if part[0] == "path":
        return _text(hook, "path", secret)
    if part[0] == "target" and hook.target:
        return _text(hook, "target", secret)
    return False


def _text(record: Request | Webhook, name: str, secret: str) -> bool:
    """The text attribute `name` of `record` with the secret replaced; whether it changed."""
    value = getattr(record, name)
    new = _replace(value, secret)
    setattr(record, name, new)
    return new != value


def _body(message: Request | Response | Webhook, secret: str) -> bool:
    """The body with the secret replaced, its Content-Length following; whether it changed."""
    body, changed = _replace_body(message.body, message.headers, secret)
    if changed:
        message.body = body
        message.headers = _fix_length(message.headers, len(body))
    return changed


def _header(headers: Headers, index: int, secret: str) -> bool:
    name, value = headers[index]
    new = _replace(value, secret)
    headers[index] = (name, new)
    return new != value
