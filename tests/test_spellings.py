"""One value, every way HTTP writes it: the one table substitution, redaction and `--fix` use."""

from __future__ import annotations

import base64
import json
from urllib.parse import unquote, unquote_plus, urlencode

from replayproxy.redact import MARKER, Redactor
from replayproxy.scrub import _replace
from replayproxy.variables import (
    EVERY_SPELLING,
    SUBSTITUTED,
    TEXT_SPELLINGS,
    Bindings,
    base64_unpadded,
    base64_url_unpadded,
    form_encoded,
    json_escaped,
    json_escaped_twice,
    plain,
    spellings,
    url_encoded,
    url_path,
)

VALUE = 'tok/en+1 "q"&\u00e9\u4e2d:x?'


def _unpad(data: bytes) -> bytes:
    return data + b"=" * (-len(data) % 4)


def test_each_spelling_is_what_the_real_decoder_reads_back() -> None:
    assert plain(VALUE).decode() == VALUE
    assert json.loads(b'"' + json_escaped(VALUE) + b'"') == VALUE
    once = json.loads(b'"' + json_escaped_twice(VALUE) + b'"')  # JSON inside a JSON string
    assert json.loads('"' + once + '"') == VALUE
    assert unquote(url_encoded(VALUE).decode()) == VALUE and b"/" not in url_encoded(VALUE)
    assert unquote(url_path(VALUE).decode()) == VALUE and b"/" in url_path(VALUE)
    assert unquote_plus(form_encoded(VALUE).decode()) == VALUE
    assert urlencode({"k": VALUE}).split("=", 1)[1].encode() == form_encoded(VALUE)
    assert base64.b64decode(_unpad(base64_unpadded(VALUE))).decode() == VALUE
    assert base64.urlsafe_b64decode(_unpad(base64_url_unpadded(VALUE))).decode() == VALUE
    every = spellings(VALUE)
    assert len(every) == len(set(every)) == len(EVERY_SPELLING)  # this value: all distinct
    assert spellings("abc") == [b"abc", b"YWJj"]  # the same bytes are listed once


def test_redaction_substitution_and_fix_share_the_table() -> None:
    # redaction: every spelling of a secret becomes the marker
    redactor = Redactor(secrets=[VALUE])
    for spelled in spellings(VALUE):
        assert redactor.scrub(b"<" + spelled + b">") == b"<" + MARKER.encode() + b">"
    # substitution: each substituted spelling of the recorded value becomes the live value's
    live = "live/value 2 \u00fc"
    bindings = Bindings()
    bindings.bind(VALUE, live)
    for spell in SUBSTITUTED:
        assert bindings.substitute(b"[" + spell(VALUE) + b"]") == b"[" + spell(live) + b"]"
    body = json.dumps({"v": VALUE}).encode()
    assert json.loads(bindings.substitute(body)) == {"v": live}  # JSON stays valid
    # check --fix: every text spelling goes, in the text it was flagged in
    for spell in TEXT_SPELLINGS:
        assert _replace(f"a {spell(VALUE).decode()} b", VALUE) == f"a {MARKER} b"
