"""derm as an installable package: pyproject.toml's `derm` command is the CLI, only the `derm` package is
installed, and an editable install in a fresh virtual environment gives a working `derm` that still finds
the shipped weights and test split beside the package."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_derm_command_is_the_cli_and_prints_help(capsys):
    target = project()["project"]["scripts"]["derm"]
    module, _, attribute = target.partition(":")
    entry = getattr(importlib.import_module(module), attribute)
    assert callable(entry)
    with pytest.raises(SystemExit) as done:
        entry(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("predict", "segment", "report", "train"))


def test_only_the_derm_package_is_installed():
    from setuptools import find_packages

    found = find_packages(where=str(REPO), include=project()["tool"]["setuptools"]["packages"]["find"]["include"])
    assert "derm" in found and all(p == "derm" or p.startswith("derm.") for p in found)
    subpackages = {".".join(init.parent.relative_to(REPO).parts) for init in (REPO / "derm").rglob("__init__.py")}
    assert subpackages <= set(found)  # e.g. derm.uncertainty travels with it


def test_the_version_is_the_packages_own():
    import derm

    assert project()["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "derm.__version__"}
    assert derm.__version__.count(".") == 2


def test_an_editable_install_gives_a_derm_command_that_finds_the_shipped_files(tmp_path):
    """pip install --no-deps -e . in a new virtual environment (it sees this Python's packages; nothing is
    downloaded), then `derm --help` and the weights and test split the package looks for."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--disable-pip-version-check", "-e", str(REPO)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    done = subprocess.run([str(venv / "bin" / "derm"), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: derm ") and "report" in done.stdout and "predict" in done.stdout
    where = subprocess.run([str(python), "-c", "from derm import data, weights; "
                            "print(weights.default_weights_dir()); print(data.TEST_SUBSET_DIR)"],
                           capture_output=True, text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert where.returncode == 0, where.stderr
    assert where.stdout.split() == [str(REPO / "weights"), str(REPO / "data" / "ham10000-test")]
