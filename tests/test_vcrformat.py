"""vcrpy's cassette shapes load as vcrpy reads them, and what neither writes is named.

The shapes recorded live are in test_vcrpy_differential.py and test_vcrpy_old_formats.py; here
are the ones no installable vcrpy writes any more (pre-1.0, Python 2 tags) and the errors.
"""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import brotli
import pytest
from helpers import raw_get
from hypothesis import given, settings
from hypothesis import strategies as st

from replayproxy.api import SyncReplayProxy
from replayproxy.cassette import from_data, header, load, loads
from replayproxy.errors import CassetteError
from replayproxy.vcrformat import Invalid

HEAD = "version: 1\ninteractions:\n"


def one(response: str, request: str = "    method: GET\n    uri: http://h/x\n") -> str:
    return f"{HEAD}- request:\n{request}  response:\n{response}"


def test_pre_1_0_layout_names_the_migration_that_converts_it(tmp_path: Path) -> None:
    """vcrpy's own `python -m vcr.migration` converts these files (so they are that layout);
    replayproxy says so in one line, and loads what the migration wrote."""
    yaml_old = (
        "- request: !!python/object:vcr.request.Request\n"
        "    body: null\n"
        "    headers: !!python/object/apply:__builtin__.frozenset\n"
        "    - - !!python/tuple [Accept, '*/*']\n"
        "    host: api.example.com\n    method: GET\n    path: /v1/jobs?x=1\n"
        "    port: 443\n    protocol: https\n"
        "  response:\n"
        "    body: {string: '{\"ok\": true}'}\n"
        "    headers: [\"Content-Type: application/json\\r\\n\"]\n"
        "    status: {code: 200, message: OK}\n"
    )
    json_old = json.dumps([{
        "request": {"protocol": "http", "host": "127.0.0.1", "port": 8000, "path": "/a",
                    "method": "POST", "body": "x=1", "headers": {"Accept": "*/*"}},
        "response": {"status": {"code": 201, "message": "Created"},
                     "headers": ["Content-Type: text/plain\r\n", "X-Id: 7\r\n"],
                     "body": {"string": "made"}},
    }])
    for name, text, uri in (("old.yaml", yaml_old, "https://api.example.com/v1/jobs?x=1"),
                            ("old.json", json_old, "http://127.0.0.1:8000/a")):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(CassetteError) as caught:
            load(path)
        message = str(caught.value)
        assert "\n" not in message and str(path) in message
        assert "pre-1.0" in message and "python -m vcr.migration" in message
        migrated = tmp_path / f"migrated-{name}"
        shutil.copy(path, migrated)
        done = subprocess.run([sys.executable, "-m", "vcr.migration", str(migrated)],
                              capture_output=True, text=True, timeout=60)
        assert "[OK]" in done.stderr, done.stderr
        cassette = load(migrated)
        assert cassette.interactions[0].request.uri == uri


@pytest.mark.parametrize(
    ("text", "where", "named"),
    [
        (one("    body: {string: ''}\n    headers: {}\n    status: {code: 200, message: OK}\n"
             "    bdy: {string: x}\n"), ":10:", "interactions[0].response.bdy"),
        (one("    body: {string: ''}\n    status: {code: 200, message: OK}\n",
             "    method: GET\n    uri: http://h/x\n    matchon: path\n"), ":6:",
         "interactions[0].request.matchon"),
        (one("    body: {strng: x}\n    status: {code: 200, message: OK}\n"), ":7:",
         "interactions[0].response.body.strng"),
        ("version: 1\ninteraction: []\ninteractions: []\n", ":2:", "interaction"),
        (HEAD + "- request: {method: GET, uri: 'http://h/'}\n  response: {status: {code: 200},"
         " body: {string: ''}}\n  recorded_at: 2020-01-01\n", ":5:", "interactions[0].recorded_at"),
    ],
)
def test_a_key_nobody_writes_is_named_with_its_line(text: str, where: str, named: str) -> None:
    with pytest.raises(CassetteError) as caught:
        loads(text, "c.yaml")
    message = str(caught.value)
    assert message.startswith(f"c.yaml{where} {named}: unknown field"), message
    assert "\n" not in message


def test_shapes_of_every_stub() -> None:
    cassette = loads(
        HEAD
        # httpx before vcrpy 6: status_code / http_version / content
        + "- request: {method: GET, uri: 'http://h/a', body: '', headers: {accept: ['*/*']}}\n"
        "  response: {status_code: 203, http_version: HTTP/1.1, content: caf\u00e9,"
        " headers: {X-A: ['1']}}\n"
        # tornado: headers a list of [name, [values]] pairs, and a url
        "- request: {method: GET, uri: 'http://h/b', body: null, headers: {}}\n"
        "  response:\n    status: {code: 200, message: OK}\n    url: http://h/b\n"
        "    headers:\n    - !!python/tuple [Set-Cookie, [a=1, b=2]]\n    - [X-B, '2']\n"
        "    body: {string: !!python/unicode tornado}\n"
        # aiohttp's json= body as the mapping itself; body {} for no body; message null
        "- request: {method: POST, uri: 'http://h/c', body: {k: [1, caf\u00e9]}, headers: {}}\n"
        "  response: {status: {code: 204, message: null}, headers: {}, body: {}}\n"
        # base64_string, bytes request body, null headers
        "- request: {method: PUT, uri: 'http://h/d', body: !!binary AP8=, headers: null}\n"
        "  response: {status: {code: 200, message: OK}, body: {base64_string: AAEC/w==}}\n"
    )
    a, b, c, d = cassette.interactions
    # no reason phrase kept: the standard one (a recorded empty phrase is sent empty)
    assert (a.response.status, a.response.reason, a.response.body) == (
        203, "Non-Authoritative Information", "café".encode())
    assert a.response.headers == [("X-A", "1")]
    assert b.response.headers == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-B", "2")]
    assert b.response.body == b"tornado" and b.request.body == b""
    assert json.loads(c.request.body) == {"k": [1, "café"]}
    assert c.request.body == json.dumps({"k": [1, "café"]}).encode()  # as aiohttp sends it
    assert (c.response.body, c.response.reason) == (b"", "No Content")
    assert (d.request.body, d.response.body) == (b"\x00\xff", b"\x00\x01\x02\xff")


def test_json_surrogate_pairs_and_lone_halves() -> None:
    doc = {"version": 1, "interactions": [{
        "request": {"method": "GET", "uri": "http://h/", "body": None, "headers": {}},
        "response": {"status": {"code": 200, "message": "OK"}, "headers": {},
                     "body": {"string": "smile \U0001f600"}},
    }]}
    text = json.dumps(doc, indent=4)  # as vcrpy's serializer writes it
    assert "\\ud83d\\ude00" in text
    assert loads(text).interactions[0].response.body == "smile \U0001f600".encode()
    with pytest.raises(CassetteError) as caught:
        loads(text.replace("\\ud83d\\ude00", "\\ud83d"), "c.json")
    assert "c.json" in str(caught.value) and "surrogate \\ud83d" in str(caught.value)
    doc["interactions"][0]["response"]["extra"] = 1  # a bad key in a file with an emoji:
    text = json.dumps(doc, indent=4)  # still named with its line
    line = next(n for n, t in enumerate(text.splitlines(), 1) if '"extra"' in t)
    with pytest.raises(CassetteError, match=rf"^c.json:{line}: interactions\[0\]\.response\.extra"):
        loads(text, "c.json")


@pytest.mark.parametrize("depth", [101, 100_000])
def test_a_json_cassette_nested_too_deep_is_refused_before_anything_recurses(depth: int) -> None:
    text = '{"version": 1, "interactions": [' + "[" * depth + "]" * depth + "]}"
    with pytest.raises(CassetteError, match=r"^c.json: not a valid cassette: nested deeper"):
        loads(text, "c.json")


def test_a_false_coding_moves_to_the_metadata_and_a_true_one_stays() -> None:
    coded = gzip.compress(b"zipped", mtime=0)
    cassette = loads(
        HEAD
        + "- request: {method: GET, uri: 'http://h/a'}\n"
        "  response: {status: {code: 200, message: OK}, body: {string: plain},"
        " headers: {Content-Encoding: [gzip], Content-Length: ['99'], X: ['1']}}\n"
        "- request: {method: GET, uri: 'http://h/b'}\n"
        "  response: {status: {code: 200, message: OK}, body: {string: !!binary "
        + base64.b64encode(coded).decode()
        + "}, headers: {content-encoding: [gzip]}}\n"
    )
    a, b = cassette.interactions
    assert a.meta["content_encoding"] == "gzip"
    assert header(a.response.headers, "content-encoding") is None
    assert header(a.response.headers, "content-length") == "5"
    assert b.response.body == coded and header(b.response.headers, "content-encoding") == "gzip"
    assert "content_encoding" not in b.meta
    # one headers mapping (a YAML alias) for a decoded body and a coded one: each read alone
    shared = loads(
        HEAD
        + "- request: {method: GET, uri: 'http://h/a'}\n"
        "  response: {status: {code: 200, message: OK}, body: {string: plain},"
        " headers: &h {Content-Encoding: [gzip]}}\n"
        "- request: {method: GET, uri: 'http://h/b'}\n"
        "  response: {status: {code: 200, message: OK}, body: {string: !!binary "
        + base64.b64encode(coded).decode()
        + "}, headers: *h}\n"
    )
    a, b = shared.interactions
    assert a.meta["content_encoding"] == "gzip" and "content_encoding" not in b.meta
    assert header(b.response.headers, "content-encoding") == "gzip"



def test_a_coded_bomb_loads_in_bounded_memory(tmp_path: Path) -> None:
    """Whether a body is still in its coding is tried up to a limit, not to the end: 165 bytes
    of brotli for 100 MiB (decoded whole at load, twice over in memory) load as still coded."""
    import os

    from proc import PEAK_THEN_RUN, ROOT

    c = brotli.Compressor(quality=5)
    bomb = b"".join(c.process(b"\0" * (1 << 20)) for _ in range(100)) + c.finish()
    script = tmp_path / "load.py"
    script.write_text(
        "import sys\nfrom replayproxy.cassette import load\n"
        "body = load(sys.argv[1]).interactions[0].response.body\n"
        "print(len(body), body[:4].hex())\n"
    )
    peaks = []
    for name, body in (("small", brotli.compress(b"{}")), ("bomb", bomb)):
        path, peak = tmp_path / f"{name}.yaml", tmp_path / f"{name}.peak"
        path.write_text(one(
            "    status: {code: 200, message: OK}\n    headers: {Content-Encoding: [br]}\n"
            f"    body: {{string: !!binary {base64.b64encode(body).decode()}}}\n"))
        done = subprocess.run(
            [sys.executable, "-c", PEAK_THEN_RUN, str(peak), str(script), str(path)],
            capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [str(len(body)), body[:4].hex()]  # served as recorded
        peaks.append(int(peak.read_text().split()[1]) / 1024)  # "VmHWM:   53040 kB"
    grown = peaks[1] - peaks[0]
    # at most the limit (max_body_size, 64 MiB) and a step; it was 200
    assert grown < 100, f"loading the bomb took {grown:.0f} MiB more"


def test_a_decoded_body_is_coded_again_only_for_a_client_that_accepts_it(tmp_path: Path) -> None:
    """http.client decodes nothing: these are the bytes on the wire."""
    doc = json.dumps({"n": list(range(300))}).encode()
    path = tmp_path / "c.yaml"
    path.write_text(
        HEAD
        + f"- request: {{method: GET, uri: 'http://h/g'}}\n  response: {{status: {{code: 200, "
        f"message: OK}}, body: {{string: '{doc.decode()}'}}, headers: {{Content-Encoding: "
        "[gzip], Content-Type: [application/json]}}\n"
        "  replayproxy: {at: 1.0}\n"
        + f"- request: {{method: GET, uri: 'http://h/b'}}\n  response: {{status: {{code: 200, "
        f"message: OK}}, body: {{string: '{doc.decode()}'}}, headers: {{}}}}\n"
        "  replayproxy: {content_encoding: br}\n"
    )
    with SyncReplayProxy(path) as proxy:
        for accept, coded in (("gzip, deflate", True), (None, False), ("gzip;q=0, br", False),
                              ("*", True), ("identity", False)):
            headers, body = raw_get(proxy.url, "/g", accept)
            assert int(headers["content-length"]) == len(body)
            if coded:
                assert headers["content-encoding"] == "gzip" and gzip.decompress(body) == doc
            else:
                assert "content-encoding" not in headers and body == doc
        headers, body = raw_get(proxy.url, "/b", "gzip, deflate, br")
        assert headers["content-encoding"] == "br" and brotli.decompress(body) == doc
        assert int(headers["content-length"]) == len(body)


_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.binary(max_size=8)
    | st.sampled_from(["gzip", "br, gzip", "\ud83d", "Content-Encoding", "", "x-gzip"]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["string", "base64_string", "code", "message",
                                       "Content-Encoding", "content-length", "k"]), inner,
                      max_size=3),
    max_leaves=8,
)
_section = {
    "request": st.fixed_dictionaries({"method": st.just("GET"), "uri": st.just("http://h/")},
                                     optional={k: _values for k in ("body", "headers", "extra")}),
    "response": st.fixed_dictionaries(
        {}, optional={k: _values for k in ("status", "headers", "body", "url", "status_code",
                                           "content", "http_version", "bdy")}),
}


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries(_section, optional={"replayproxy": _values, "recorded_at": _values}))
def test_any_interaction_shape_loads_or_is_named(item: dict) -> None:
    """Whatever the shapes (the stubs' and nonsense), a cassette loads or gets the one error."""
    try:
        from_data({"version": 1, "interactions": [item]})
    except Invalid as exc:
        assert exc.message and "\n" not in exc.message
