"""Optional peer columns of the replay benchmark: mitmproxy and talkback.

Each peer is installed on first use into the git-ignored bench/.peers/ (mitmproxy: its own venv,
never the project's environment; talkback: `npm install --prefix`), the benchmark's 1,200
interactions are converted into the peer's own replay format, and the peer is started as a
`harness.Server` on loopback, then driven by wrk like the replay servers (`measure`). Anything
missing or failing (no venv, no node/npm, an install error or timeout) is a skip reason, never
an exception out of `prepare`. See bench/README.md.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import harness
from harness import HERE, Cpus, Server, log

PEERS = HERE / ".peers"
INSTALL_TIMEOUT = 900.0  # seconds for one install step (venv, pip, npm)
TALKBACK_SPEC = "talkback@4"  # the major whose requestHandler/tape format talkback_server.js uses
# Replayed requests keep whatever target the flows name; this loopback address is never contacted
# (mitmproxy: server_replay_extra=404 and lazy connections; talkback: record mode DISABLED with
# fallbackMode NOT_FOUND), but if it were, nothing leaves the machine.
NOWHERE = "http://127.0.0.1:9"


@dataclass
class Peer:
    name: str
    version: str
    cmd: list[str]
    how: str  # the options, for the JSON and the README
    converted: dict = field(default_factory=dict)


def free_port() -> int:
    """A port free on 127.0.0.1 right now, for a tool that does not print the URL it listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(cmd: list[str], log: Path, timeout: float = INSTALL_TIMEOUT, **kw) -> str | None:
    """Run an install step, appending its output to `log`; None when it worked, else why not."""
    with log.open("ab") as fh:
        fh.write(f"$ {' '.join(cmd)}\n".encode())
        fh.flush()
        try:
            out = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout,
                                 check=False, **kw)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(cmd[:4])}` did not finish within {timeout:.0f} s (see {log})"
        except OSError as exc:
            return f"`{cmd[0]}` could not run: {exc}"
    if out.returncode != 0:
        return f"`{' '.join(cmd[:4])}` exited {out.returncode} (see {log})"
    return None


def _version(cmd: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        if out.returncode == 0:
            return out.stdout.strip()
    return ""


# ---------------------------------------------------------------------------------------------
# mitmproxy: a flows file served by `mitmdump --mode reverse:... --server-replay FLOWS`

MITM_DIR = PEERS / "mitmproxy"
MITM_BIN = MITM_DIR / "bin"

# Run by the peer venv's python: JSON lines of exchanges in, one mitmproxy flow each out.
WRITE_FLOWS = r"""
import base64, json, sys
from mitmproxy import http, io
from mitmproxy.test import tflow

source, target, base = sys.argv[1:4]
with open(source, encoding="utf-8") as src, open(target, "wb") as out:
    writer = io.FlowWriter(out)
    for line in src:
        x = json.loads(line)
        flow = http.HTTPFlow(tflow.tclient_conn(), tflow.tserver_conn())
        headers = [(b"Content-Type", b"application/json")] if x["request_body"] else []
        flow.request = http.Request.make(x["method"], base + x["path"],
                                         base64.b64decode(x["request_body"]), headers)
        flow.response = http.Response.make(
            x["status"], base64.b64decode(x["body"]),
            [(k.encode(), v.encode()) for k, v in x["headers"]])
        flow.response.reason = x["reason"]
        writer.add(flow)
"""


def _ensure_mitmproxy(log: Path) -> str | None:
    mitmdump = MITM_BIN / "mitmdump"
    if mitmdump.exists() and _version([str(mitmdump), "--version"]):
        return None
    if not (MITM_BIN / "python").exists():
        shutil.rmtree(MITM_DIR, ignore_errors=True)
        why = _run([sys.executable, "-m", "venv", str(MITM_DIR)], log, timeout=300)
        if why:
            return f"no venv for mitmproxy: {why}"
    why = _run([str(MITM_BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                "mitmproxy"], log)
    if why:
        return f"pip install mitmproxy into {MITM_DIR.relative_to(HERE.parent)} failed: {why}"
    if not (mitmdump.exists() and _version([str(mitmdump), "--version"])):
        return f"mitmdump missing or not running after the install (see {log})"
    return None


def mitmproxy(items: list, work: Path, log: Path) -> Peer | str:
    why = _ensure_mitmproxy(log)
    if why:
        return why
    version = _version([str(MITM_BIN / "mitmdump"), "--version"]).splitlines()[0]
    version = version.split(":", 1)[-1].strip()  # "Mitmproxy: 11.0.2"
    source, flows = work / "exchanges.jsonl", work / "jobs.mitm"
    with source.open("w", encoding="utf-8") as fh:
        for x in items:
            fh.write(json.dumps({
                "method": x.method, "path": x.path, "status": x.status, "reason": x.reason,
                "request_body": base64.b64encode(x.request_body).decode(),
                "headers": list(x.headers), "body": base64.b64encode(x.body).decode()}) + "\n")
    t0 = time.perf_counter()
    why = _run([str(MITM_BIN / "python"), "-c", WRITE_FLOWS, str(source), str(flows), NOWHERE],
               log, timeout=300)
    if why:
        return f"writing the mitmproxy flows failed: {why}"
    options = {
        "server_replay_extra": "404",        # an unrecorded request: 404, never forwarded
        "server_replay_reuse": "true",        # keep flows after use: wrk repeats the list
        "server_replay_ignore_host": "true",  # match on scheme, method, path+query, body
        "server_replay_ignore_port": "true",
        "connection_strategy": "lazy",        # no upstream connection before a request needs it
        "flow_detail": "0",
        "termlog_verbosity": "warn",
        "confdir": str(MITM_DIR / "conf"),    # its CA files here, not in ~/.mitmproxy
    }
    port = free_port()
    cmd = [str(MITM_BIN / "mitmdump"), "--mode", f"reverse:{NOWHERE}",
           "--listen-host", "127.0.0.1", "--listen-port", str(port),
           "--server-replay", str(flows)]
    for key, value in options.items():
        cmd += ["--set", f"{key}={value}"]
    # mitmdump names no URL of its own on stdout: print ours first (harness.Server waits until it
    # answers), then send mitmdump's own output to stderr (the server log), so no pipe fills.
    shell = ["sh", "-c", f'echo "mitmdump {version} on http://127.0.0.1:{port}"; exec "$@" 1>&2',
             "sh", *cmd]
    how = (f"mitmdump --mode reverse:{NOWHERE} --server-replay <flows> "
           + " ".join(f"--set {k}={v}" for k, v in options.items() if k != "confdir"))
    return Peer("mitmproxy", version, shell, how,
                {"flows": len(items), "file_mib": round(flows.stat().st_size / 2**20, 2),
                 "convert_s": round(time.perf_counter() - t0, 2)})


# ---------------------------------------------------------------------------------------------
# talkback: one JSON5 tape per interaction, served by bench/talkback_server.js

TALKBACK_DIR = PEERS / "talkback"
TALKBACK_PKG = TALKBACK_DIR / "node_modules" / "talkback" / "package.json"


def _ensure_talkback(log: Path) -> str | None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node:
        return "node is not installed (talkback is a Node package)"
    major = _version([node, "-p", "process.versions.node.split('.')[0]"])
    if not major.isdigit() or int(major) < 18:
        return f"node {major or '?'} is too old for talkback 4 (needs >= 18)"
    if TALKBACK_PKG.exists():
        return None
    if not npm:
        return "npm is not installed"
    TALKBACK_DIR.mkdir(parents=True, exist_ok=True)
    why = _run([npm, "install", "--prefix", str(TALKBACK_DIR), "--no-audit", "--no-fund",
                TALKBACK_SPEC], log)
    if why:
        return f"npm install {TALKBACK_SPEC} failed: {why}"
    if not TALKBACK_PKG.exists():
        return f"talkback missing after npm install (see {log})"
    return None


def _tape(x) -> dict:
    """The tape talkback itself writes for this exchange (its TapeRenderer): JSON bodies of a
    JSON content type stored as parsed JSON, flagged "HumanReadable" in meta."""
    meta: dict = {"createdAt": "2026-11-29T00:00:00.000Z", "host": NOWHERE}
    req: dict = {"url": x.path, "method": x.method, "headers": {}, "body": ""}
    if x.request_body:
        req["headers"] = {"content-type": "application/json"}
        req["body"] = json.loads(x.request_body)
        meta["reqHumanReadable"] = True
    headers = {name.lower(): [value] for name, value in x.headers}
    body: object = base64.b64encode(x.body).decode()
    if headers.get("content-type") == ["application/json"] and x.body:
        body = json.loads(x.body)
        meta["resHumanReadable"] = True
    return {"meta": meta, "req": req, "res": {"status": x.status, "headers": headers,
                                              "body": body}}


def talkback(items: list, work: Path, log: Path) -> Peer | str:
    why = _ensure_talkback(log)
    if why:
        return why
    version = json.loads(TALKBACK_PKG.read_text())["version"]
    tapes = work / "tapes"
    tapes.mkdir()
    t0 = time.perf_counter()
    for number, x in enumerate(items, start=1):
        (tapes / f"{number:05d}.json5").write_text(json.dumps(_tape(x), indent=2),
                                                   encoding="utf-8")
    cmd = [shutil.which("node") or "node", str(HERE / "talkback_server.js"),
           str(TALKBACK_DIR / "node_modules" / "talkback"), str(tapes)]
    how = ("talkback.requestHandler({record: DISABLED, fallbackMode: NOT_FOUND, "
           "allowHeaders: [], silent: true, summary: false}) behind node's http server "
           "on 127.0.0.1:0 (bench/talkback_server.js)")
    return Peer("talkback", version, cmd, how,
                {"tapes": len(items), "convert_s": round(time.perf_counter() - t0, 2)})


# ---------------------------------------------------------------------------------------------


def prepare(items: list, work: Path, logs: Path) -> dict[str, Peer | str]:
    """Each peer installed and its replay data written under `work`: a Peer, or why not."""
    out: dict[str, Peer | str] = {}
    logs.mkdir(parents=True, exist_ok=True)
    for name, make in (("mitmproxy", mitmproxy), ("talkback", talkback)):
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        try:
            out[name] = make(items, folder, logs / f"peer-install-{name}.log")
        except Exception as exc:  # a broken peer is a skip, not a broken benchmark
            out[name] = f"{type(exc).__name__}: {exc}"
    return out


def _drive(ready: dict[str, Peer], small: tuple[Path, Path, list], rounds: int,
           seconds: float, cpus: Cpus, quiet_wait: float, servers: dict[str, Server],
           result: dict, runs: dict[str, list[dict]]) -> None:
    """Start the baseline and the peers (into `servers`, which the caller stops), check the
    peers' answers, then the wrk rounds (into `runs`)."""
    client_cpu, server_cpu = cpus
    cassette, requests, items = small
    servers["baseline"] = Server("peers-baseline-1200", harness.baseline_cmd(cassette),
                                 server_cpu)
    for name, peer in ready.items():
        try:
            servers[name] = Server(f"peer-{name}", peer.cmd, server_cpu, timeout=120)
        except Exception as exc:
            result["skipped"][name] = f"did not start: {exc}"
            continue
        entry = {"version": peer.version, "how": peer.how, "converted": peer.converted,
                 "ready_s": round(servers[name].ready_s, 2)}
        log(f"peer {name} {peer.version} ready in {servers[name].ready_s:.2f} s; "
                "checking every answer byte for byte")
        entry["bytes"] = harness.check_bytes(servers[name].url, items)
        result["peers"][name] = entry
    names = [n for n in ready if n in result["peers"]]
    for name in ["baseline", *names]:  # warm up
        harness.wrk(servers[name].url, requests, 32, 1, client_cpu)
    for r in range(rounds):
        for conns in (32, 1):
            harness.settle(quiet_wait)
            for name in harness.alternate(["baseline", *names], r):
                data = harness.wrk(servers[name].url, requests, conns, seconds, client_cpu,
                                   servers[name])
                runs[f"{name}@{conns}"].append(data)
                log(harness.wrk_line(f"peers round {r + 1}/{rounds}", name, conns, data))


def measure(peers: dict[str, Peer | str], small: tuple[Path, Path, list], rounds: int,
            seconds: float, cpus: Cpus, quiet_wait: float = 0.0) -> dict:
    """wrk on each available peer, c32 then c1 per round, alternating with a fresh baseline;
    the ratios are per round (peer / the baseline run of the same round and connections)."""
    result: dict = {"skipped": {k: v for k, v in peers.items() if isinstance(v, str)},
                    "peers": {}}
    ready = {k: v for k, v in peers.items() if isinstance(v, Peer)}
    if not ready:
        return result
    runs: dict[str, list[dict]] = collections.defaultdict(list)
    servers: dict[str, Server] = {}
    try:
        _drive(ready, small, rounds, seconds, cpus, quiet_wait, servers, result, runs)
    finally:
        for name, server in servers.items():
            if name in result["peers"]:
                result["peers"][name]["peak_rss_mib"] = server.memory().get("VmHWM")
            server.stop()
    names = [n for n in ready if n in result["peers"]]
    for key, items_ in runs.items():
        result.setdefault("summary", {})[key] = harness.summarise(items_)
    for name in names:
        for conns in (32, 1):
            result["peers"][name][f"c{conns}"] = harness.paired(runs[f"{name}@{conns}"],
                                                                runs[f"baseline@{conns}"])
    result["wrk_runs"] = runs
    return result


def rows(res: dict) -> list[tuple]:
    """Table rows for run.render: informational, no target."""
    out: list[tuple] = []
    s = res.get("summary", {})
    for name, p in res.get("peers", {}).items():
        b32, p32, b1, p1 = (s["baseline@32"], s[f"{name}@32"], s["baseline@1"],
                            s[f"{name}@1"])
        q32 = p["c32"]
        quiet = (f"{q32['rps_ratio_median_quiet']:.2f} n={q32['quiet_pairs']}"
                 if q32["quiet_pairs"] else "n=0")
        out.append((f"req/s c32 (baseline | {name} {p['version']})", f"{b32['rps']:,.0f}",
                    f"{p32['rps']:,.0f}", f"{q32['rps_ratio_median']:.2f}", quiet, "", ""))
        out.append((f"p99 ms c32 (baseline | {name})", f"{b32['p99_ms']:.2f}",
                    f"{p32['p99_ms']:.2f}", f"{q32['p99_ratio_median']:.2f}", "", "", ""))
        out.append((f"server CPU us per request c32 (baseline | {name})",
                    f"{b32['server_cpu_us_per_req']:.0f}", f"{p32['server_cpu_us_per_req']:.0f}",
                    f"{p32['server_cpu_us_per_req'] / b32['server_cpu_us_per_req']:.2f}", "", "",
                    ""))
        out.append((f"req/s c1 (baseline | {name})", f"{b1['rps']:,.0f}", f"{p1['rps']:,.0f}",
                    f"{p['c1']['rps_ratio_median']:.2f}", "", "", ""))
        check = p["bytes"]
        out.append((f"byte-identical answers, {check['checked']:,} ({name})", "",
                    f"{check['checked'] - check['mismatches']}/{check['checked']}", "", "", "",
                    ""))
        errors = p32["errors"] + p1["errors"]
        out.append((f"wrk errors / non-2xx ({name})", "", str(errors), "", "", "", ""))
    return out


def notes(res: dict) -> list[str]:
    out = [f"{name} column skipped: {why}" for name, why in res.get("skipped", {}).items()]
    share = harness.foreign_share(res.get("wrk_runs", {}))
    if share:
        out.append(f"peer columns: other processes used up to {share[0]:.0f}% of the cpus "
                   f"(median {share[1]:.0f}%); read the paired ratios")
    return out


if __name__ == "__main__":  # install and convert only: `python bench/peers.py`
    import workload

    _, _, exchanges = workload.ensure(harness.CASSETTES, 1200)
    scratch = harness.RESULTS / "peers"
    shutil.rmtree(scratch, ignore_errors=True)
    for key, value in prepare(exchanges, scratch, harness.RESULTS / "logs").items():
        print(key, value if isinstance(value, str) else
              json.dumps({"version": value.version, "cmd": value.cmd, **value.converted}))
