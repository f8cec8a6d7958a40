"""What the wheel installs: the package and its subpackages, the CLI as `replayproxy.cli` (a
symlink to cli.py at the top of the repository), and no top-level module named `cli`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_cli_is_installed_inside_the_package_only() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"] == {"replayproxy": "replayproxy.cli:main"}
    setuptools = pyproject["tool"]["setuptools"]
    assert "py-modules" not in setuptools  # no top-level module of ours
    assert setuptools["packages"]["find"]["include"] == ["replayproxy", "replayproxy.*"]
    link = ROOT / "replayproxy" / "cli.py"
    assert link.is_symlink() and link.resolve() == (ROOT / "cli.py").resolve()


def test_the_console_script_runs_from_the_package_alone(tmp_path: Path) -> None:
    """`replayproxy.cli:main`, as the console script calls it, from a copy of the package as
    the wheel holds it (the symlink followed) and nothing of the repository on the path: no
    top-level `cli` is imported (an editable install of an older layout may still offer one)."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "replayproxy", site / "replayproxy",
                    ignore=shutil.ignore_patterns("__pycache__"))
    assert not (site / "replayproxy" / "cli.py").is_symlink()
    code = (
        f"import sys; sys.path.insert(0, {str(site)!r})\n"
        "from replayproxy.cli import main\n"
        "sys.argv = ['replayproxy', '--help']\n"
        "try:\n"
        "    main()\n"
        "finally:\n"
        "    assert 'cli' not in sys.modules, 'a top-level cli module was imported'\n"
        f"    assert sys.modules['replayproxy.cli'].__file__.startswith({str(site)!r})\n"
    )
    run = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "Usage: replayproxy [OPTIONS] COMMAND" in run.stdout
    assert "sandbox" in run.stdout and "vary" in run.stdout


def test_pip_builds_a_wheel_with_no_top_level_cli(tmp_path: Path) -> None:
    """pip itself, with the build backend pyproject.toml names, is the judge of what a user
    installs: the wheel holds `replayproxy/cli.py` as a regular file with cli.py's text, names
    only `replayproxy` as its top level, and its console script is `replayproxy.cli:main`."""
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", "node_modules", ".build", "__pycache__", "*.egg-info", ".mypy_cache",
        ".import_linter_cache", ".peers", "results", "build", "dist"))
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "whl"),
         str(src)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    (wheel,) = (tmp_path / "whl").glob("replayproxy-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert z.read(info).decode().split() == ["replayproxy"]
        assert "replayproxy = replayproxy.cli:main" in z.read(entry).decode()
        assert z.read("replayproxy/cli.py") == (ROOT / "cli.py").read_bytes()
    assert not [n for n in names if "/" not in n], f"top-level files in the wheel: {names}"
    assert "replayproxy/demo/sandbox.py" in names and "replayproxy/variants/base.py" in names
