"""The docs are the reference: every command and option is on docs/commands.md, every config
key in docs/config.md, every relative link in the README, SECURITY.md and docs/ lands on a file
and a heading that exist, and the README stays what a newcomer reads in five minutes."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

import click
import pytest
import yaml
from markdown_it import MarkdownIt

from cli import main

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
COMMANDS = (ROOT / "docs" / "commands.md").read_text()
#: The pages whose relative links must resolve (the example app's README links into docs/ too).
LINKED = [
    ROOT / "README.md",
    ROOT / "SECURITY.md",
    ROOT / "examples" / "camber_app" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
MD = MarkdownIt("commonmark").enable("table")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: lower case, punctuation but `-` and `_` dropped,
    each space a hyphen (github-slugger's rule; duplicates get -1, -2, ... in `anchors`)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors_and_links(text: str) -> tuple[set[str], list[tuple[str, int]]]:
    """The anchors a page's headings make, and every link target in it with its line, as a
    CommonMark parser sees them (so nothing inside code spans or fenced blocks counts)."""
    tokens = MD.parse(text)
    anchors: set[str] = set()
    seen: Counter[str] = Counter()
    links: list[tuple[str, int]] = []
    line = 1
    for i, token in enumerate(tokens):
        if token.map:
            line = token.map[0] + 1
        if token.type == "heading_open":
            children = tokens[i + 1].children or []
            plain = "".join(c.content for c in children if c.type in ("text", "code_inline"))
            base = slug(plain)
            anchors.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
            seen[base] += 1
        for child in token.children or []:
            if child.type == "link_open":
                links.append((str(child.attrs["href"]), line))
    return anchors, links


def broken_links(pages: list[Path], root: Path = ROOT) -> list[str]:
    """`page:line: target: what is wrong` for each relative link that lands nowhere."""
    parsed = {}

    def parse(path: Path) -> tuple[set[str], list[tuple[str, int]]]:
        if path not in parsed:
            parsed[path] = anchors_and_links(path.read_text())
        return parsed[path]

    broken = []
    for page in pages:
        for href, line in parse(page)[1]:
            parts = urlsplit(href)
            if parts.scheme or parts.netloc:
                continue  # a web address: not ours to check offline
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            where = f"{page.relative_to(root)}:{line}: {href}"
            if not target.exists():
                broken.append(f"{where}: no such file")
            elif parts.fragment and target.suffix == ".md":
                if unquote(parts.fragment) not in parse(target)[0]:
                    broken.append(f"{where}: no heading with that anchor in {target.name}")
    return broken


def command_sections() -> dict[str, str]:
    """docs/commands.md cut at its `## `replayproxy NAME ...`` headings, by command name."""
    found = {}
    for block in re.split(r"^## ", COMMANDS, flags=re.M)[1:]:
        match = re.match(r"`replayproxy ([\w-]+)", block)
        if match:
            found[match.group(1)] = block
    return found


def test_every_command_and_option_is_on_the_commands_page() -> None:
    missing = []
    intro = COMMANDS.split("\n## ", 1)[0]
    for param in main.params:
        for opt in param.opts:
            if opt not in intro:
                missing.append(f"replayproxy {opt} (in the page's introduction)")
    sections = command_sections()
    for name, command in main.commands.items():
        if name not in sections:
            missing.append(f"command {name} (a '## `replayproxy {name} ...`' section)")
            continue
        for param in command.params:
            if isinstance(param, click.Option):
                for opt in param.opts:
                    if opt.startswith("--") and opt not in sections[name] and opt != "--help":
                        missing.append(f"{name} {opt}")
    assert not missing, "undocumented in docs/commands.md: " + ", ".join(missing)


def test_the_config_reference_names_every_key_and_loads(tmp_path: Path) -> None:
    from dataclasses import asdict

    from replayproxy.config import Config, load_config

    text = (ROOT / "docs" / "config.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "replayproxy.yaml").write_text(block)
    load_config(tmp_path / "replayproxy.yaml")  # the real loader refuses unknown keys and types
    documented = yaml.safe_load(block)

    def missing(fields: dict, doc: object, prefix: str = "") -> list[str]:
        out = []
        for key, value in fields.items():
            if not isinstance(doc, dict) or key not in doc:
                out.append(prefix + key)
            elif isinstance(value, dict) and value:
                out += missing(value, doc[key], f"{prefix}{key}.")
        return out

    assert missing(asdict(Config()), documented) == []


def test_quick_start_is_two_commands_and_ci_runs_the_test_one() -> None:
    quick = README.split("## Quick start", 1)[1].split("```", 2)[1].strip().splitlines()
    assert len(quick) == 2
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert "python -m pytest -n 2 -q" in quick[1] and "python -m pytest -n 2 -q" in ci


def test_the_readme_is_a_five_minute_read_that_leads_into_the_docs() -> None:
    assert len(README.splitlines()) <= 250
    links = {href for _, hrefs in [anchors_and_links(README)] for href, _ in hrefs}
    assert "docs/README.md" in links and "SECURITY.md" in links and "docs/design.md" in links
    assert "ARCHITECTURE.md" not in README  # the design page is the map now
    index = {href for href, _ in anchors_and_links((ROOT / "docs" / "README.md").read_text())[1]}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert pages - index == set(), "docs pages missing from docs/README.md"


def test_every_relative_link_lands_on_a_file_and_a_heading() -> None:
    assert broken_links(LINKED) == []


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [  # as GitHub renders them (the anchors the README used before the docs moved)
        ("vcrpy's cassettes", "vcrpys-cassettes"),
        ("Vary: Camber on a bad day", "vary-camber-on-a-bad-day"),
        ("HTTPS and forward-proxy mode", "https-and-forward-proxy-mode"),
        (
            "replayproxy send-webhook CASSETTE (--index N | --all) --to URL",
            "replayproxy-send-webhook-cassette---index-n----all---to-url",
        ),
        ("replayproxy check CASSETTE...", "replayproxy-check-cassette"),
        ("new_episodes and résumé", "new_episodes-and-résumé"),
    ],
)
def test_anchors_follow_githubs_rule(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_the_link_check_finds_a_missing_file_a_missing_anchor_and_ignores_code(
    tmp_path: Path,
) -> None:
    (tmp_path / "b.md").write_text("# Title\n\n## `replayproxy run` here\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md#replayproxy-run-here) [ok](b.md#twice-1) [ok](#top) [web](https://x.example/y)\n"
        "\n# Top\n\n`[code](nowhere.md)`\n\n```\n[fenced](nowhere.md)\n```\n\n"
        "| a | b |\n|---|---|\n| [cell](gone.md) | x |\n\n"
        "[bad anchor](b.md#twice-2) [bad file](c.md) [bad local](#nothing)\n"
    )
    assert broken_links([page], root=tmp_path) == [
        "a.md:13: gone.md: no such file",
        "a.md:15: b.md#twice-2: no heading with that anchor in b.md",
        "a.md:15: c.md: no such file",
        "a.md:15: #nothing: no heading with that anchor in a.md",
    ]
