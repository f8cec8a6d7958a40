"""The benchmark workload: deterministic Camber-like cassettes and the request list wrk walks.

A cassette of N interactions holds round(N * 1000 / 1200) GET /v1/jobs/<id> answered by ~1 KiB of
JSON, and the rest POST /v1/jobs with a JSON body answered 201. The YAML is written directly (not
through PyYAML's emitter, which takes minutes at 100,000 interactions) in the shape
`replayproxy.cassette.dumps` writes, so both replayproxy and vcrpy read it as they read a recording.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

UPSTREAM = "https://staging.camber.example"
STATUSES = ("PENDING", "RUNNING", "COMPLETED", "FAILED")
BODY_SIZE = 1024


@dataclass(frozen=True, slots=True)
class Exchange:
    method: str
    path: str
    request_body: bytes
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


def _job(rng: random.Random, job_id: int) -> dict:
    return {
        "job_id": job_id,
        "status": rng.choice(STATUSES),
        "command": f"python run.py input_{job_id}.pdf --pages {rng.randint(1, 400)}",
        "engine_type": rng.choice(("MPI", "NEXTFLOW", "SNAKEMAKE")),
        "node_size": rng.choice(("XSMALL", "SMALL", "MEDIUM", "LARGE")),
        "num_nodes": rng.randint(1, 16),
        "with_gpu": rng.random() < 0.2,
        "submitted_by": f"user{rng.randint(1, 99)}@example.com",
        "created_at": f"2026-11-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00Z",
    }


def _pad(doc: dict, rng: random.Random, size: int) -> bytes:
    """Grow `doc` with log lines until its JSON is about `size` bytes."""
    logs: list[str] = []
    doc["logs"] = logs
    length = len(json.dumps(doc))
    while length < size:
        line = f"step {len(logs) + 1}: ok in {rng.randint(1, 9999)} ms"
        length += len(json.dumps(line)) + (2 if logs else 0)
        logs.append(line)
    return json.dumps(doc).encode()


def exchanges(count: int, seed: int = 7) -> list[Exchange]:
    """`count` interactions, GETs and POSTs interleaved (one POST after every five GETs)."""
    rng = random.Random(seed)
    n_get = round(count * 1000 / 1200)
    out: list[Exchange] = []
    gets = posts = 0
    while len(out) < count:
        post = (len(out) % 6 == 5 and posts < count - n_get) or gets >= n_get
        rid = ("X-Request-Id", f"req_{rng.getrandbits(64):016x}")
        ctype = ("Content-Type", "application/json")
        if post:
            posts += 1
            job_id = 500_000 + posts
            spec = {
                "command": f"python run.py input_{job_id}.pdf",
                "engine_type": "MPI",
                "node_size": "SMALL",
                "num_nodes": 1 + posts % 8,
            }
            answer = {"job_id": job_id, "status": "PENDING"}
            out.append(
                Exchange("POST", "/v1/jobs", json.dumps(spec).encode(), 201, "Created",
                         (ctype, rid), _pad(answer, rng, 256))
            )
        else:
            gets += 1
            job_id = 100_000 + gets
            out.append(
                Exchange("GET", f"/v1/jobs/{job_id}", b"", 200, "OK", (ctype, rid),
                         _pad(_job(rng, job_id), rng, BODY_SIZE))
            )
    return out


def _q(data: bytes | str) -> str:
    text = data.decode() if isinstance(data, bytes) else data
    return "'" + text.replace("'", "''") + "'"


def write_cassette(path: Path, items: list[Exchange]) -> None:
    """YAML in the shape replayproxy saves (vcrpy's interactions, plus our top-level keys)."""
    lines = ["version: 1", "interactions:"]
    add = lines.append
    for x in items:
        add("- request:")
        add(f"    body: {_q(x.request_body) if x.request_body else 'null'}")
        if x.request_body:
            add("    headers:")
            add("      Content-Type: [application/json]")
        else:
            add("    headers: {}")
        add(f"    method: {x.method}")
        add(f"    uri: {UPSTREAM}{x.path}")
        add("  response:")
        add(f"    body: {{string: {_q(x.body)}}}")
        add("    headers:")
        for name, value in x.headers:
            add(f"      {name}: [{value}]")
        add(f"    status: {{code: {x.status}, message: {x.reason}}}")
    lines += ["webhooks: []", "replayproxy:", "  format: 1", "  tool_version: 0.1.0",
              f"  upstream: {UPSTREAM}", ""]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)


def write_requests(path: Path, items: list[Exchange]) -> None:
    """One request a line for bench/walk.lua: METHOD<TAB>PATH<TAB>BODY (bodies have no tabs)."""
    with path.open("w", encoding="utf-8") as fh:
        for x in items:
            body = x.request_body.decode()
            assert "\t" not in body and "\n" not in body
            fh.write(f"{x.method}\t{x.path}\t{body}\n")


def ensure(folder: Path, count: int) -> tuple[Path, Path, list[Exchange]]:
    """The cassette and request list for `count` interactions (written once, then reused)."""
    folder.mkdir(parents=True, exist_ok=True)
    items = exchanges(count)
    cassette = folder / f"jobs-{count}.yaml"
    requests = folder / f"jobs-{count}.requests"
    if not cassette.exists():
        write_cassette(cassette, items)
    if not requests.exists():
        write_requests(requests, items)
    return cassette, requests, items
