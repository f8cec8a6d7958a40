"""A picture of the conversation: one self-contained HTML page of a cassette (and a replay report).

Three lanes (the app, replayproxy, Camber) on a time axis; requests and answers as arrows
app -> proxy -> Camber and back, webhooks Camber -> proxy -> app; with a replay report, the misses,
retries and failed deliveries on top. Clicking a message shows its headers and body.

Pure: no sockets, no click. The page has no external assets and fetches nothing: the CSS and the
script are inline, the data is JSON in a `<script type="application/json">` (every `<`, `>` and `&`
escaped, so no body can close the script), and the script writes text only through `textContent`.

Drawn elements carry `data-kind` (request | response | webhook | miss | retry | duplicate | failed),
`data-number` (the interaction or webhook number, or the miss's 1-based place in the report) and a
stable `id` (`request-3`, `webhook-1`, `miss-2`, `retry-1-1-2`, `failed-1-1`, ...).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .atomic import write_atomic
from .cassette import Cassette, Headers, Interaction, Webhook, header, interaction_meta
from .inspect import event_type
from .report import Delivery, Report

TEXT_LIMIT = 64 * 1024  # characters of a text body shown in the detail panel
HEX_LIMIT = 512  # bytes of a binary body shown as a hex preview

LANES = ["app", "replayproxy", "Camber"]


# ---------------------------------------------------------------------------------------------
# bodies and headers for the detail panel


def body_view(body: bytes, content_type: str | None = None) -> dict[str, Any]:
    """Text (pretty JSON when it parses) or, for bytes that are not text, a hex preview."""
    size = len(body)
    if not body:
        return {"size": 0, "binary": False, "text": ""}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        text = None
    if text is None:
        preview = hexdump(body[:HEX_LIMIT])
        more = size - min(size, HEX_LIMIT)
        if more:
            preview += f"\n... {more} more bytes"
        return {"size": size, "binary": True, "text": preview}
    if (content_type or "").split(";")[0].strip().endswith("json") or text[:1] in "{[":
        try:
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            pass
    if len(text) > TEXT_LIMIT:
        text = text[:TEXT_LIMIT] + f"\n... ({len(text) - TEXT_LIMIT} more characters)"
    return {"size": size, "binary": False, "text": text}


def hexdump(data: bytes) -> str:
    lines = []
    for offset in range(0, len(data), 16):
        chunk = data[offset : offset + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{offset:08x}  {hexes:<47}  |{text}|")
    return "\n".join(lines)


def _headers(headers: Headers) -> list[list[str]]:
    return [[k, v] for k, v in headers]


def _target(uri: str) -> str:
    parts = urlsplit(uri)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


# ---------------------------------------------------------------------------------------------
# the model: every message with its time, lanes and details


def _times(interactions: list[Interaction]) -> tuple[list[tuple[float, float]], bool]:
    """(request time, answer time) per interaction; recorded when every one has `at`, else
    evenly spaced in recorded order (second value False)."""
    timed = bool(interactions) and all(i.at is not None for i in interactions)
    out = []
    for n, item in enumerate(interactions):
        if timed and item.at is not None:
            start, duration = float(item.at), item.duration
            out.append((start, start + (float(duration) if duration and duration > 0 else 0.0)))
        else:
            out.append((float(n), n + 0.5))
    return out, timed


def _webhook_time(hook: Webhook, times: list[tuple[float, float]], timed: bool) -> float:
    at = hook.at  # the loader's: a finite float or None
    if timed and at is not None:
        return at
    anchor = hook.after or hook.cause
    if anchor is not None and 1 <= anchor <= len(times):
        base = times[anchor - 1][1]
    else:
        base = times[-1][1] if times else 0.0
    # untimed: the delay is real seconds while the axis is positions; keep it after its anchor
    return base + (hook.delay if timed else 0.25)


def build_model(cassette: Cassette, report: Report | None = None) -> dict[str, Any]:
    """Everything the page draws, as plain data (JSON-ready)."""
    times, timed = _times(cassette.interactions)
    unused = set(report.unused) if report is not None else set()
    events: list[dict[str, Any]] = []
    seq = 0

    def add(event: dict[str, Any]) -> None:
        nonlocal seq
        event["seq"] = seq
        seq += 1
        events.append(event)

    for n, item in enumerate(cassette.interactions, start=1):
        req, res = item.request, item.response
        start, end = times[n - 1]
        flags = ["unused"] if n in unused else []
        meta = [["interaction", str(n)], ["uri", req.uri]]
        meta += [[k, str(v)] for k, v in interaction_meta(item).items()]
        add(
            {
                "id": f"request-{n}",
                "kind": "request",
                "number": n,
                "t": start,
                "from": "app",
                "to": "Camber",
                "label": f"#{n} {req.method} {_target(req.uri)}",
                "flags": flags,
                "detail": {
                    "title": f"request #{n}: {req.method} {_target(req.uri)}",
                    "fields": meta,
                    "headers": _headers(req.headers),
                    "body": body_view(req.body, header(req.headers, "content-type")),
                },
            }
        )
        add(
            {
                "id": f"response-{n}",
                "kind": "response",
                "number": n,
                "t": end,
                "from": "Camber",
                "to": "app",
                "label": f"#{n} {res.status} {res.reason}".rstrip(),
                "status": res.status,
                "flags": flags + (["error"] if res.status >= 400 else []),
                "detail": {
                    "title": f"answer #{n}: {res.status} {res.reason}".rstrip(),
                    "fields": [["interaction", str(n)], ["status", str(res.status)]],
                    "headers": _headers(res.headers),
                    "body": body_view(res.body, header(res.headers, "content-type")),
                },
            }
        )

    by_hook: dict[int, list[Delivery]] = {}
    for d in report.deliveries if report is not None else ():
        by_hook.setdefault(d.webhook, []).append(d)
    never_due = set(report.webhooks_never_due) if report is not None else set()

    for n, hook in enumerate(cassette.webhooks, start=1):
        t = _webhook_time(hook, times, timed)
        mine = by_hook.get(n, [])
        flags = []
        if any(not d.as_expected for d in mine):
            flags.append("failed")
        if n in never_due:
            flags.append("never-due")
        fields = [["webhook", str(n)], ["method", hook.method], ["path", hook.path]]
        for key in ("target", "event_id", "cause", "after", "delay", "at"):
            value = getattr(hook, key)
            if value is not None:
                fields.append([key, str(value)])
        if n in never_due:
            fields.append(["replay", "never due: its interaction was never served"])
        kind = event_type(hook)
        add(
            {
                "id": f"webhook-{n}",
                "kind": "webhook",
                "number": n,
                "t": t,
                "from": "Camber",
                "to": "app",
                "label": f"webhook {n}" + (f" {kind}" if kind else ""),
                "flags": flags,
                "detail": {
                    "title": f"webhook {n}" + (f": {kind}" if kind else ""),
                    "fields": fields,
                    "headers": _headers(hook.headers),
                    "body": body_view(hook.body, header(hook.headers, "content-type")),
                    "attempts": [_attempts_row(d) for d in mine],
                },
            }
        )
        _delivery_events(n, t, mine, hook, add)

    for m, miss in enumerate(report.unmatched if report is not None else (), start=1):
        near = miss.near_misses
        closest = near[0].number if near else None
        if closest is not None and 1 <= closest <= len(times):
            t = times[closest - 1][1]
            where = f"shown after the closest recorded request, #{closest}"
        else:
            t = max((e["t"] for e in events), default=0.0)
            where = "shown at the end (no close recorded request)"
        fields = [
            ["request", miss.request],
            ["placed", f"the report has no time for it; {where}"],
        ]
        fields += [[f"closest #{x.number}", x.describe()] for x in near]
        add(
            {
                "id": f"miss-{m}",
                "kind": "miss",
                "number": m,
                "t": t,
                "from": "app",
                "to": "replayproxy",
                "label": f"miss {miss.request}",
                "flags": ["miss"],
                "detail": {
                    "title": f"unmatched request: {miss.request}",
                    "fields": fields,
                    "headers": [],
                    "body": {"size": 0, "binary": False, "text": ""},
                },
            }
        )

    events.sort(key=lambda e: (e["t"], e["seq"]))
    summary: dict[str, Any] = {
        "interactions": len(cassette.interactions),
        "webhooks": len(cassette.webhooks),
        "timed": timed,
    }
    if report is not None:
        outcomes = report.outcomes()
        summary["report"] = {
            "served": report.served,
            "unmatched": len(report.unmatched),
            "unused": len(unused),
            "delivered": outcomes["delivered"],
            "failed": outcomes["failed"],
            "pending": outcomes["pending"],
            "diverged": report.diverged,
        }
    return {"lanes": LANES, "events": events, "summary": summary}


def _attempts_row(d: Delivery) -> dict[str, Any]:
    return {
        "copy": d.copy,
        "url": d.url,
        "outcome": d.outcome,
        "test": d.test,
        "expected": d.as_expected,
        "attempts": [{"status": a.status, "error": a.error, "at": a.at} for a in d.attempts],
    }


def _delivery_events(
    number: int, t: float, deliveries: list[Delivery], hook: Webhook, add: Any
) -> None:
    """Retries (attempts after a copy's first), extra copies, and a mark per failed delivery.
    Attempts sit after the webhook, spaced as they happened during the replay."""
    origin = min((a.at for d in deliveries for a in d.attempts), default=0.0)
    for d in deliveries:
        copy = d.copy
        for k, a in enumerate(d.attempts, start=1):
            if k == 1 and copy == 1:
                continue  # that one is the webhook arrow itself
            when = t + max(0.0, a.at - origin)
            kind = "retry" if k > 1 else "duplicate"
            status = a.status
            answer = str(status) if status is not None else (a.error or "no answer")
            add(
                {
                    "id": f"{kind}-{number}-{copy}-{k}",
                    "kind": kind,
                    "number": number,
                    "t": when,
                    "from": "replayproxy",
                    "to": "app",
                    "label": f"{kind} {k} of webhook {number}"
                    + (f" (copy {copy})" if copy > 1 else "")
                    + f": {answer}",
                    "flags": [] if status is not None and 200 <= status < 300 else ["error"],
                    "detail": {
                        "title": f"webhook {number}, copy {copy}, attempt {k}",
                        "fields": [
                            ["url", d.url],
                            ["status", "" if status is None else str(status)],
                            ["error", a.error or ""],
                            ["at", f"{a.at}s after the replay started"],
                        ],
                        "headers": _headers(hook.headers),
                        "body": body_view(hook.body, header(hook.headers, "content-type")),
                    },
                }
            )
        if not d.as_expected:
            last = d.attempts[-1] if d.attempts else None
            when = t + max(0.0, last.at - origin) if last is not None else t
            error, status = (last.error, last.status) if last is not None else (None, None)
            why = (
                f"the app accepted a webhook sent with a {d.test}"
                if d.test
                else f"outcome {d.outcome}: " + (error or f"last status {status}")
            )
            add(
                {
                    "id": f"failed-{number}-{copy}",
                    "kind": "failed",
                    "number": number,
                    "t": when,
                    "from": "replayproxy",
                    "to": "app",
                    "label": f"webhook {number} failed: {why}",
                    "flags": ["failed"],
                    "detail": {
                        "title": f"failed delivery of webhook {number} (copy {copy})",
                        "fields": [
                            ["url", d.url],
                            ["outcome", d.outcome],
                            ["why", why],
                            ["attempts", str(len(d.attempts))],
                        ],
                        "headers": [],
                        "body": {"size": 0, "binary": False, "text": ""},
                        "attempts": [_attempts_row(d)],
                    },
                }
            )


# ---------------------------------------------------------------------------------------------
# the page


def embed_json(data: Any) -> str:
    """JSON safe inside <script>: no `<`, `>` or `&` survives (so no `</script>` or `<!--`)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return (
        text.replace("&", "\\u0026")
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def write_html(
    cassette: Cassette, path: str | Path, report: Report | None = None, title: str = ""
) -> None:
    page = render_html(cassette, report, title) if title else render_html(cassette, report)
    write_atomic(Path(path), page.encode("utf-8"))


def render_html(
    cassette: Cassette,
    report: Report | None = None,
    title: str = "replayproxy: the conversation",
) -> str:
    parts = {
        "TITLE": html.escape(title),
        "CSS": _CSS,
        "JS": _JS,
        "DATA": embed_json(build_model(cassette, report)),
    }
    # one pass, so nothing substituted (a title, a body) is ever read as a placeholder
    return re.sub(r"__(TITLE|CSS|JS|DATA)__", lambda m: parts[m.group(1)], _PAGE)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; \
style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>__TITLE__</title>
<style>__CSS__</style>
</head>
<body>
<header>
<h1>__TITLE__</h1>
<div id="summary"></div>
<div id="controls">
<label><input type="checkbox" id="scale"> time to scale</label>
<span class="legend">
<span class="key k-request">request</span><span class="key k-response">answer</span>
<span class="key k-webhook">webhook</span><span class="key k-retry">retry</span>
<span class="key k-miss">miss</span><span class="key k-failed">failed delivery</span>
</span>
</div>
</header>
<main>
<div id="diagram" role="list"></div>
<aside id="detail"><p class="hint">Click a message to see its headers and body.</p></aside>
</main>
<noscript>This page draws the timeline with its inline script:
enable JavaScript to see it.</noscript>
<script type="application/json" id="timeline-data">__DATA__</script>
<script>__JS__</script>
</body>
</html>
"""

_CSS = """
:root { --request: #2563eb; --response: #059669; --webhook: #7c3aed; --retry: #d97706;
  --miss: #dc2626; --failed: #dc2626; --lane: #94a3b8; --fg: #0f172a; --muted: #64748b; }
* { box-sizing: border-box; }
body { margin: 0; font: 13px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: #f8fafc; }
header { padding: 10px 16px; background: #fff; border-bottom: 1px solid #e2e8f0; }
h1 { font-size: 16px; margin: 0 0 4px; }
#summary span { margin-right: 14px; }
#summary .bad { color: var(--miss); font-weight: 600; }
#controls { margin-top: 6px; display: flex; gap: 16px; align-items: center; flex-wrap: wrap; }
.key { margin-right: 10px; padding-left: 18px; position: relative; }
.key::before { content: ""; position: absolute; left: 0; top: 50%; width: 14px; height: 3px;
  background: currentColor; }
.k-request { color: var(--request); } .k-response { color: var(--response); }
.k-webhook { color: var(--webhook); } .k-retry { color: var(--retry); }
.k-miss, .k-failed { color: var(--miss); }
main { display: flex; align-items: flex-start; gap: 12px; padding: 12px 16px; }
#diagram { flex: 1 1 auto; min-width: 520px; background: #fff; border: 1px solid #e2e8f0;
  border-radius: 6px; overflow-x: auto; }
#detail { flex: 0 0 380px; max-width: 40vw; background: #fff; border: 1px solid #e2e8f0;
  border-radius: 6px; padding: 10px 12px; position: sticky; top: 12px; max-height: 92vh;
  overflow: auto; }
#detail h2 { font-size: 14px; margin: 0 0 8px; word-break: break-all; }
#detail h3 { font-size: 12px; margin: 10px 0 4px; color: var(--muted); text-transform: uppercase; }
#detail table { border-collapse: collapse; width: 100%; }
#detail td { border-top: 1px solid #f1f5f9; padding: 2px 4px; vertical-align: top;
  font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
#detail td:first-child { color: var(--muted); white-space: nowrap; word-break: normal; }
#detail pre { background: #f1f5f9; padding: 6px; margin: 0; white-space: pre-wrap;
  word-break: break-all; font-size: 12px; }
#detail pre.hex { white-space: pre; word-break: normal; overflow-x: auto; }
.hint { color: var(--muted); }
svg text { font-size: 11px; fill: var(--fg); }
.lane-line { stroke: var(--lane); stroke-dasharray: 4 4; }
.lane-head rect { fill: #e2e8f0; } .lane-head text { font-weight: 600; font-size: 12px; }
.tick { fill: var(--muted); font-family: ui-monospace, monospace; font-size: 10px; }
.msg { cursor: pointer; }
.msg line { stroke-width: 2; }
.msg .hit { stroke: transparent; stroke-width: 14; }
.msg:hover .arrow, .msg:focus .arrow, .msg.selected .arrow { stroke-width: 3.5; }
.msg:focus { outline: none; }
.msg.selected .label { font-weight: 700; }
.kind-request .arrow { stroke: var(--request); }
.kind-response .arrow { stroke: var(--response); }
.kind-webhook .arrow { stroke: var(--webhook); }
.kind-retry .arrow, .kind-duplicate .arrow { stroke: var(--retry); stroke-dasharray: 6 3; }
.kind-miss .arrow { stroke: var(--miss); }
.kind-failed .arrow { stroke: var(--failed); stroke-width: 3; }
.flag-error .label { fill: var(--miss); }
.flag-unused { opacity: 0.45; }
.highlight { fill: #fee2e2; }
.cross { stroke: var(--miss); stroke-width: 3; }
.via { fill: #fff; stroke: #475569; stroke-width: 1.5; }
"""

_JS = r"""
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var model = JSON.parse(document.getElementById("timeline-data").textContent);
  var diagram = document.getElementById("diagram");
  var detail = document.getElementById("detail");
  var scale = document.getElementById("scale");
  var COLOURS = {request: "#2563eb", response: "#059669", webhook: "#7c3aed", retry: "#d97706",
                 duplicate: "#d97706", miss: "#dc2626", failed: "#dc2626"};

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    for (var k in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, k)) {
      node.setAttribute(k, String(attrs[k])); } }
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function h(name, text, parent) {
    var node = document.createElement(name);
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    if (parent) { parent.appendChild(node); }
    return node;
  }
  function cross(cx, y) {
    return "M" + (cx - 6) + "," + (y - 6) + " l12,12 m0,-12 l-12,12";
  }
  function seconds(t) { return (Math.round(t * 1000) / 1000).toFixed(3) + "s"; }

  function summary() {
    var box = document.getElementById("summary"), s = model.summary;
    h("span", s.interactions + " interactions", box);
    h("span", s.webhooks + " webhooks", box);
    h("span", s.timed ? "recorded timings" : "no timings recorded: evenly spaced in order", box);
    if (s.report) {
      var r = s.report;
      h("span", "replay: served " + r.served, box);
      h("span", "unmatched " + r.unmatched, box).className = r.unmatched ? "bad" : "";
      h("span", "unused " + r.unused, box);
      h("span", "delivered " + r.delivered, box);
      h("span", "failed " + r.failed, box).className = r.failed ? "bad" : "";
      h("span", r.diverged ? "diverged" : "as recorded", box).className = r.diverged ? "bad" : "";
    }
  }

  function layout(events, toScale) {
    var ys = [], top = 56, row = 30;
    if (!toScale || events.length < 2) {
      for (var i = 0; i < events.length; i++) { ys.push(top + 20 + i * row); }
      return ys;
    }
    var t0 = events[0].t, t1 = events[events.length - 1].t, span = Math.max(t1 - t0, 1e-6);
    var height = Math.max(events.length * row, 400);
    var prev = -Infinity;
    for (var j = 0; j < events.length; j++) {
      var y = top + 20 + (events[j].t - t0) / span * height;
      if (y < prev + 17) { y = prev + 17; }  // keep labels legible when messages bunch up
      ys.push(y); prev = y;
    }
    return ys;
  }

  function draw() {
    while (diagram.firstChild) { diagram.removeChild(diagram.firstChild); }
    var events = model.events, ys = layout(events, scale.checked);
    var width = Math.max(diagram.clientWidth - 2, 640), left = 70;
    var laneW = (width - left - 60 - 70) / (model.lanes.length - 1);
    var x = {};
    model.lanes.forEach(function (name, i) { x[name] = left + 60 + i * laneW; });
    var bottom = (ys.length ? ys[ys.length - 1] : 80) + 40;
    var svg = el("svg", {id: "timeline", width: width, height: bottom, role: "img",
                         "aria-label": "timeline of the conversation",
                         "data-mode": scale.checked ? "scale" : "order"}, diagram);
    var defs = el("defs", {}, svg);
    Object.keys(COLOURS).forEach(function (kind) {
      var m = el("marker", {id: "head-" + kind, viewBox: "0 0 10 10", refX: 9, refY: 5,
                            markerWidth: 10, markerHeight: 10, markerUnits: "userSpaceOnUse",
                            orient: "auto-start-reverse"}, defs);
      el("path", {d: "M0,0 L10,5 L0,10 z", fill: COLOURS[kind]}, m);
    });
    model.lanes.forEach(function (name) {
      var g = el("g", {"class": "lane-head", "data-lane": name}, svg);
      el("rect", {x: x[name] - 55, y: 8, width: 110, height: 26, rx: 4}, g);
      el("text", {x: x[name], y: 25, "text-anchor": "middle"}, g).textContent = name;
      el("line", {"class": "lane-line", x1: x[name], y1: 34, x2: x[name], y2: bottom - 10}, svg);
    });
    el("text", {"class": "tick", x: 6, y: 25}, svg).textContent =
      model.summary.timed ? "time" : "order";
    events.forEach(function (ev, i) {
      var y = ys[i], from = x[ev.from], to = x[ev.to], dir = to > from ? 1 : -1;
      var flags = (ev.flags || []).map(function (f) { return " flag-" + f; }).join("");
      var g = el("g", {"class": "msg kind-" + ev.kind + flags, id: ev.id, "data-kind": ev.kind,
                       "data-number": ev.number, "data-t": ev.t, tabindex: 0, role: "listitem",
                       "aria-label": ev.label}, svg);
      if (ev.kind === "miss" || ev.kind === "failed" || (ev.flags || []).indexOf("failed") >= 0) {
        el("rect", {"class": "highlight", x: Math.min(from, to) - 8, y: y - 19,
                    width: Math.abs(to - from) + 16, height: 24, rx: 4}, g);
      }
      el("text", {"class": "tick", x: 6, y: y + 3}, g).textContent =
        model.summary.timed ? seconds(ev.t) : "";
      el("line", {"class": "hit", x1: from, y1: y, x2: to, y2: y}, g);
      el("line", {"class": "arrow", x1: from, y1: y, x2: to - dir * 2, y2: y,
                  "marker-end": "url(#head-" + ev.kind + ")"}, g);
      if (Math.abs(to - from) > laneW * 1.5) {
        el("circle", {"class": "via", cx: x.replayproxy, cy: y, r: 3.5}, g);
      }
      if (ev.kind === "miss") {
        var cx = x.replayproxy + 10;
        el("path", {"class": "cross", d: cross(cx, y)}, g);
        el("text", {"class": "label", x: cx + 12, y: y + 4}, g).textContent = "502 no match";
      }
      if (ev.kind === "failed") {
        var ax = x.app - 12;
        el("path", {"class": "cross", d: cross(ax, y)}, g);
      }
      var lx = Math.min(from, to) + 8;
      var label = el("text", {"class": "label", x: lx, y: y - 5}, g);
      label.textContent = ev.label.length > 90 ? ev.label.slice(0, 87) + "..." : ev.label;
      el("title", {}, g).textContent = ev.label;
      g.addEventListener("click", function () { select(ev, g); });
      g.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); select(ev, g); }
      });
    });
    document.body.setAttribute("data-drawn", String(events.length));
  }

  function rows(parent, pairs) {
    var table = h("table", null, parent);
    pairs.forEach(function (p) {
      var tr = h("tr", null, table);
      h("td", p[0], tr); h("td", p[1], tr);
    });
  }

  function select(ev, g) {
    var old = document.querySelectorAll(".msg.selected");
    for (var i = 0; i < old.length; i++) { old[i].classList.remove("selected"); }
    g.classList.add("selected");
    var d = ev.detail;
    while (detail.firstChild) { detail.removeChild(detail.firstChild); }
    detail.setAttribute("data-showing", ev.id);
    h("h2", d.title, detail);
    rows(detail, [["time", model.summary.timed ? seconds(ev.t) : "position " + ev.t]]
      .concat(d.fields || []));
    (d.attempts || []).forEach(function (a) {
      h("h3", "delivery, copy " + a.copy + ": " + a.outcome +
        (a.expected ? "" : " (not as expected)"), detail);
      rows(detail, a.attempts.map(function (x, k) {
        return ["attempt " + (k + 1), (x.status === null ? "no answer" : x.status) +
                (x.error ? " " + x.error : "") + (x.at === null ? "" : " at " + x.at + "s")];
      }));
    });
    h("h3", "headers (" + d.headers.length + ")", detail);
    if (d.headers.length) { rows(detail, d.headers); }
    h("h3", "body (" + d.body.size + " bytes" +
      (d.body.binary ? ", binary: hex preview" : "") + ")", detail);
    var pre = h("pre", d.body.text || "(empty)", detail);
    pre.id = "detail-body";
    if (d.body.binary) { pre.className = "hex"; }
  }

  summary();
  draw();
  scale.addEventListener("change", draw);
  var resizing = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizing); resizing = setTimeout(draw, 100);
  });
  // a link may name a message (page.html#request-3); else show the first miss or failure
  var wanted = decodeURIComponent(window.location.hash.slice(1));
  var first = model.events.filter(function (e) { return e.id === wanted; })[0] ||
    model.events.filter(function (e) { return e.kind === "miss" || e.kind === "failed"; })[0] ||
    model.events[0];
  if (first) { select(first, document.getElementById(first.id)); }
})();
"""
