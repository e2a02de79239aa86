"""scripts/install-venv (`make install`) on a fresh checkout: supported Pythons checked up front, a venv of
the wrong interpreter rebuilt, a current venv left alone. Runs the real script and a real `python -m venv`
on a tiny project, with fake interpreters standing in for Pythons this machine does not have."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "install-venv"

TINY_PYPROJECT = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "tiny-deployer-checkout"
version = "0.0.1"
requires-python = ">=3.11,<3.13"
license = "Apache-2.0"
dependencies = []

[project.optional-dependencies]
dev = []

[tool.setuptools]
py-modules = ["tiny"]
"""


def fake_python(directory: Path, name: str, version: str) -> Path:
    """An executable that answers install-venv's identity probe like Python ``version`` would."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    # Never write through a venv's python symlink into the real interpreter.
    path.unlink(missing_ok=True)
    path.write_text(f"#!/bin/sh\necho '{version} /opt/fake/python{version}'\n", encoding="utf-8")
    path.chmod(0o755)
    return path


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(SCRIPT, root / "scripts" / "install-venv")
    (root / "pyproject.toml").write_text(TINY_PYPROJECT, encoding="utf-8")
    (root / "tiny.py").write_text("VALUE = 1\n", encoding="utf-8")
    return root


def run(root: Path, fake_bin: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV")}
    # The fakes first; the real interpreter stays reachable as python3.11 through /usr/bin.
    environ["PATH"] = f"{fake_bin}:{Path(sys.executable).resolve().parent}:/usr/bin:/bin"
    environ.update(env)
    return subprocess.run(
        ["bash", str(root / "scripts" / "install-venv")], cwd=root, env=environ, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def real_minor() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def test_an_unsupported_python_is_refused_up_front(checkout: Path, tmp_path: Path) -> None:
    fake = fake_python(tmp_path / "bin", "python3.13", "3.13")
    result = run(checkout, tmp_path / "bin", PYTHON=str(fake))
    assert result.returncode == 2
    assert f"PYTHON={fake} is Python 3.13; deployer supports Python 3.11, 3.12" in result.stderr
    assert "hint:" in result.stderr and "PYTHON=python3.11" in result.stderr
    assert not (checkout / ".venv").exists()


def test_without_a_supported_python_it_names_what_it_found(checkout: Path, tmp_path: Path) -> None:
    fake_python(tmp_path / "bin", "python3", "3.13")
    environ_path = f"{tmp_path / 'bin'}:/usr/bin:/bin"
    if shutil.which("python3.11", path="/usr/bin:/bin") or shutil.which("python3.12", path="/usr/bin:/bin"):
        # This machine has a supported python3.X in /usr/bin; hide it behind fakes of unsupported versions.
        fake_python(tmp_path / "bin", "python3.11", "3.10")
        fake_python(tmp_path / "bin", "python3.12", "3.13")
    result = subprocess.run(
        ["bash", str(checkout / "scripts" / "install-venv")], cwd=checkout, capture_output=True, text=True,
        env={"PATH": environ_path, "HOME": str(tmp_path)}, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "no supported Python found (deployer supports Python 3.11, 3.12; python3 is 3.13" in result.stderr
    assert not (checkout / ".venv").exists()


def test_a_venv_of_the_wrong_python_is_rebuilt_then_reused(checkout: Path, tmp_path: Path) -> None:
    if real_minor() not in ("3.11", "3.12"):
        pytest.skip(f"the test needs a supported interpreter, runs on {real_minor()}")
    # What a failed attempt with Python 3.13 leaves behind: a .venv whose python is 3.13.
    fake_python(checkout / ".venv" / "bin", "python", "3.13")
    result = run(checkout, tmp_path / "bin", PYTHON=f"python{real_minor()}")
    assert result.returncode == 0, result.stderr
    assert "rebuilding .venv: it was made with Python 3.13, which deployer does not support" in result.stderr
    assert "run the CLI as bin/deployer" in result.stderr
    probe = subprocess.run(
        [str(checkout / ".venv" / "bin" / "python"), "-c", "import sys, tiny; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == real_minor()
    assert list(checkout.glob(".venv/.installed-*"))

    again = run(checkout, tmp_path / "bin", PYTHON=f"python{real_minor()}")
    assert again.returncode == 0 and again.stderr == ""

    # Asking for another interpreter than the one that made the venv rebuilds it too.
    other = tmp_path / "other-bin"
    other.mkdir()
    (other / "python-alias").symlink_to(Path(sys.executable).resolve())
    fake_python(checkout / ".venv" / "bin", "python", real_minor())
    rebuilt = run(checkout, other, PYTHON="python-alias")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "rebuilding .venv: it was made with /opt/fake/python" in rebuilt.stderr
