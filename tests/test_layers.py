"""The layer map in pyproject.toml (`[tool.importlinter]`) is the one place the package's
structure is written down. These tests keep it whole: every module sits in exactly one layer,
the purity rule names exactly the layers below the service layer, and import-linter, run as
`.ci/run` runs it, finds the code keeping to the map and breaking it when an import points up.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "replayproxy"


def contracts() -> dict[str, dict[str, Any]]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        table = tomllib.load(f)["tool"]["importlinter"]
    return {contract["id"]: contract for contract in table["contracts"]}


def layers() -> list[list[str]]:
    """Each layer's module names, top to bottom, split the way import-linter splits them."""
    return [[name.strip() for name in re.split(r"[:|]", layer)]
            for layer in contracts()["layers"]["layers"]]


def children(package: Path) -> set[str]:
    """The package's own modules and subpackages: what its layers must place."""
    modules = {path.stem for path in package.glob("*.py") if path.name != "__init__.py"}
    return modules | {path.parent.name for path in package.glob("*/__init__.py")}


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """`lint-imports` on the tree at `root` (its pyproject.toml, its package first on the path)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
         "--no-cache", "--no-logo"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )


def test_every_module_sits_in_exactly_one_layer() -> None:
    listed = [name for layer in layers() for name in layer]
    twice = sorted({name for name in listed if listed.count(name) > 1})
    assert not twice, f"in more than one layer of pyproject.toml: {twice}"
    present = children(PACKAGE)
    assert not present - set(listed), (
        f"replayproxy/ modules in no layer of pyproject.toml: {sorted(present - set(listed))}")
    assert not set(listed) - present, (
        f"layers name modules replayproxy/ lacks: {sorted(set(listed) - present)}")
    assert contracts()["layers"]["exhaustive"] is True  # lint-imports says the same on its own


def test_the_purity_rule_covers_every_layer_below_the_service_layer() -> None:
    stack = layers()
    service = next(n for n, layer in enumerate(stack) if "server" in layer)
    below = {f"replayproxy.{name}" for layer in stack[service + 1:] for name in layer}
    sources = set(contracts()["pure"]["source_modules"])
    assert sources == below, (
        f"missing from 'pure': {sorted(below - sources)}; not below service: "
        f"{sorted(sources - below)}")
    assert {"aiohttp", "click", "uvloop", "httptools", "socket"} <= set(
        contracts()["pure"]["forbidden_modules"])


#: what docs/design.md calls each layer of the contract, top to bottom
DESIGN_NAMES = ["face", "face", "service", "engine", "config", "base", "base"]


def test_the_design_page_shows_each_module_in_its_layer() -> None:
    """The design page's table is the map people read: a module missing from it is a room
    missing from the map, and a row in the wrong layer is a map that lies."""
    stack = layers()
    assert len(stack) == len(DESIGN_NAMES), "a layer was added: name it in DESIGN_NAMES"
    placed = {name: DESIGN_NAMES[n] for n, layer in enumerate(stack) for name in layer}
    text = (ROOT / "docs" / "design.md").read_text()
    rows = re.findall(r"^\| (\w+) \| `([\w.]+?)(?:\.py|/)` \|", text, re.MULTILINE)
    shown = {module: layer for layer, module in rows}
    assert len(rows) == len(shown), "a module has two rows in docs/design.md"
    assert sorted(set(placed) - set(shown)) == [], "modules with no row in docs/design.md"
    assert sorted(set(shown) - set(placed)) == [], "rows for modules the package lacks"
    wrong = {m: (shown[m], placed[m]) for m in shown if shown[m] != placed[m]}
    assert wrong == {}, "docs/design.md (row, contract) disagree"


def test_the_code_keeps_to_the_layers() -> None:
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Contracts: 3 kept, 0 broken." in run.stdout, run.stdout


def test_an_import_pointing_up_breaks_a_contract(tmp_path: Path) -> None:
    shutil.copytree(PACKAGE, tmp_path / "replayproxy",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    upward = {
        "matching.py": "from . import server",  # engine -> service
        "server.py": "from .api import ReplayProxy",  # service -> face
        "config.py": "from .cassette import load",  # config -> engine
        "signing.py": "import click",  # engine -> a face library
        "runner.py": "import cli",  # the package -> the command line
    }
    for name, line in upward.items():
        with open(tmp_path / "replayproxy" / name, "a") as f:
            f.write(f"\n{line}\n")
    (tmp_path / "replayproxy" / "unplaced.py").write_text('"""In no layer."""\n')
    run = lint_imports(tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Contracts: 0 kept, 3 broken." in run.stdout, run.stdout
    for broken in [
        "replayproxy.matching is not allowed to import replayproxy.server",
        "replayproxy.server is not allowed to import replayproxy.api",
        "replayproxy.config is not allowed to import replayproxy.cassette",
        "replayproxy.signing is not allowed to import click",
        "replayproxy.runner -> cli",
        "- replayproxy.unplaced",  # exhaustive: a module in no layer
    ]:
        assert broken in run.stdout, f"{broken!r} not reported:\n{run.stdout}"
