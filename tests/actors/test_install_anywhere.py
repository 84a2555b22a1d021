"""An installed maglev runs whatever the current folder holds.

``python -m mod`` puts the current folder first on ``sys.path``.  Started inside a source
checkout whose C extension is not built, actor processes spawned that way imported the
checkout instead of the installed package and died with "C extension is not built".  The
supervisor spawns them with ``python -P`` (maglev.actors.launch.actor_argv).

Both tests start ``maglev run`` the way the console script does (the script's own folder
first on ``sys.path``, never the current folder) with the current folder set to an unbuilt
copy of the source:

- the fast one "installs" maglev by copying the package (with its built extension) into a
  folder on ``PYTHONPATH``, the way the test suite itself finds maglev;
- the slow one installs it for real, ``pip install .`` into a fresh virtual environment
  (no ``PYTHONPATH``).

The copy's ``maglev/__init__.py`` raises on import.  Without that, a machine with an
editable install of maglev (``pip install -e .``, as ``just setup`` makes) would hide the
bug: setuptools' editable finder serves ``maglev._native`` from the editable checkout to a
``maglev`` package imported from anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

import maglev
from maglev.actors.launch import actor_argv, python_argv

REPO = Path(__file__).resolve().parents[2]
PKG = Path(maglev.__file__).resolve().parent  # the maglev these tests import (built)


def _built_extension() -> Path:
    found = sorted(PKG.glob("_native*.so"))
    if not found:
        pytest.fail(f"the C extension is not built in {PKG}")
    return found[0]


DECOY = "raise ImportError('maglev imported from the current folder: ' + __file__)\n"


def _unbuilt_source_copy(dest: Path, decoy: bool = True) -> Path:
    """The source tree as a fresh clone has it (plus the developer's maglev_cli symlink),
    without any built extension; with ``decoy``, importing its ``maglev`` raises."""
    ignore = shutil.ignore_patterns("_native*.so", "_native.c", "__pycache__", "*.o")
    for part in ("maglev", "cli", "examples"):
        shutil.copytree(REPO / part, dest / part, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    (dest / "maglev_cli").symlink_to("cli")
    assert not list((dest / "maglev").glob("_native*.so"))
    if decoy:
        with open(dest / "maglev" / "__init__.py", "a") as f:
            f.write(DECOY)
    return dest


def _console_script(bin_dir: Path, python: str) -> Path:
    """What pip writes for ``[project.scripts] maglev``: its folder, not the current one,
    is ``sys.path[0]``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "maglev"
    script.write_text(f"#!{python}\nimport sys\nfrom maglev_cli.main import main\nsys.exit(main())\n")
    script.chmod(0o755)
    return script


def _run_short(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict:
    r = subprocess.run(
        [*cmd, "run", "--nic", "gen:seconds=0.5", "--workers", "1", "--json"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 0, f"maglev run failed in {cwd}:\n{r.stderr[-3000:]}"
    assert "not built" not in r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["packets_in"] > 0
    assert summary["forwarded"] + sum(summary["dropped"].values()) == summary["packets_in"]
    assert all(n == 0 for n in summary["restarts"].values()), summary["restarts"]
    return summary


def test_actor_command_line_leaves_the_current_folder_off_sys_path(tmp_path):
    assert python_argv() == [sys.executable, "-P"]
    assert actor_argv("x")[-3:] == ["-m", "maglev.actors.launch", "x"]
    # -P keeps PYTHONPATH (the tests and developers rely on it) but drops the current folder.
    (tmp_path / "shadow.py").write_text("")
    env = {**os.environ, "PYTHONPATH": "/nonexistent-maglev-path"}
    code = "import sys, os; print(os.getcwd() in sys.path or '' in sys.path, sys.path)"
    out = subprocess.run([*python_argv(), "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("False") and "/nonexistent-maglev-path" in out


def test_run_inside_an_unbuilt_source_copy_uses_the_installed_package(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "_native.c", "*.o")
    shutil.copytree(PKG, site / "maglev", ignore=ignore)
    shutil.copytree(REPO / "cli", site / "maglev_cli", ignore=ignore)
    assert (site / "maglev" / _built_extension().name).exists()
    src = _unbuilt_source_copy(tmp_path / "src")
    script = _console_script(tmp_path / "bin", sys.executable)
    env = {**os.environ, "PYTHONPATH": str(site)}
    _run_short([sys.executable, str(script)], src, env)


@pytest.mark.slow
def test_pip_installed_maglev_runs_inside_an_unbuilt_source_copy(tmp_path):
    """``pip install .`` into a venv (runtime dependencies from this interpreter's
    site-packages, by a .pth file; pip fetches the build requirements as for any install), then ``maglev run`` with an unbuilt checkout as the current folder."""
    _built_extension()  # a C toolchain is here: the install compiles the extension again
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    # The runtime dependencies: this interpreter's site-packages, appended to the new venv's
    # path (--system-site-packages would give the base interpreter's, not this venv's).
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    Path(purelib, "maglev-test-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    clone = _unbuilt_source_copy(tmp_path / "clone", decoy=False)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    r = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", str(clone)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    src = _unbuilt_source_copy(tmp_path / "src")
    where = subprocess.run([str(py), "-P", "-c", "import maglev; print(maglev.__file__)"],
                           cwd=src, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv)), where
    _run_short([str(venv / "bin" / "maglev")], src, env)
