"""The protocol core runs compiled (mypyc) unless MXPRESS_COMPILE=0, and a compiled module
older than its source is refused rather than silently run."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tomllib
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from mxpress.compiled import check_fresh, is_compiled
from mxpress.errors import MxpressError, StaleBuildError

ROOT = Path(__file__).parent.parent


def compiled_modules() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    modules: list[str] = config["tool"]["mxpress"]["compiled"]["modules"]
    return modules


def test_the_listed_modules_are_compiled_unless_told_not_to() -> None:
    # `make test` builds them; CI fails here if the build fell back to pure Python.
    want = os.environ.get("MXPRESS_COMPILE", "1") != "0"
    modules = compiled_modules()
    assert "mxpress.protocol.server" in modules
    for name in modules:
        assert is_compiled(importlib.import_module(name)) is want, name


def test_the_modules_left_out_run_their_sources() -> None:
    # commands.py checks the types of its callers' arguments itself (bool is not a size),
    # which compiled argument unboxing would do before it, differently.
    commands = importlib.import_module("mxpress.protocol.commands")
    assert not is_compiled(commands)
    assert "mxpress.protocol.commands" not in compiled_modules()


def _fake_build(tmp_path: Path, name: str, source_newer: bool) -> Path:
    suffix = EXTENSION_SUFFIXES[0]
    source = tmp_path / f"{name}.py"
    compiled = tmp_path / f"{name}{suffix}"
    source.write_text("x = 1\n")
    compiled.write_bytes(b"\x7fELF")
    older, newer = 1_700_000_000_000_000_000, 1_700_000_100_000_000_000
    os.utime(source, ns=(newer, newer) if source_newer else (older, older))
    os.utime(compiled, ns=(older, older) if source_newer else (newer, newer))
    return source


def test_a_compiled_module_older_than_its_source_is_refused(tmp_path: Path) -> None:
    _fake_build(tmp_path, "fresh", source_newer=False)
    source = _fake_build(tmp_path, "edited", source_newer=True)
    with pytest.raises(StaleBuildError) as caught:
        check_fresh(tmp_path)
    assert isinstance(caught.value, MxpressError) and isinstance(caught.value, ImportError)
    assert str(source) in str(caught.value) and "make native" in str(caught.value)


def test_fresh_builds_and_lone_libraries_pass(tmp_path: Path) -> None:
    _fake_build(tmp_path, "fresh", source_newer=False)
    # the shared library (no source of its own) and other interpreters' builds are ignored
    (tmp_path / f"_native__mypyc{EXTENSION_SUFFIXES[0]}").write_bytes(b"\x7fELF")
    other_abi = tmp_path / "server.cpython-399-x86_64-linux-gnu.so"
    other_abi.write_bytes(b"\x7fELF")
    (tmp_path / "server.py").write_text("x = 1\n")
    os.utime(other_abi, ns=(1, 1))
    check_fresh(tmp_path)


def _python_in(path: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(path)}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def test_importing_the_protocol_package_refuses_a_stale_build(tmp_path: Path) -> None:
    # A copy of the package in which server.py was edited after its (stand-in) compiled
    # module was built: importing it must fail, naming the file, before loading any of it.
    shutil.copytree(ROOT / "src/mxpress", tmp_path / "mxpress")
    protocol = tmp_path / "mxpress/protocol"
    for built in protocol.glob("*.so"):
        built.unlink()
    _fake_build(protocol, "server", source_newer=True)
    (protocol / "server.py").write_text((ROOT / "src/mxpress/protocol/server.py").read_text())
    run = _python_in(tmp_path, "import mxpress.protocol.server")
    assert run.returncode != 0
    assert "StaleBuildError" in run.stderr and "protocol/server.py changed" in run.stderr

    # Rebuilt (the compiled file newer again): the same copy imports.
    (protocol / f"server{EXTENSION_SUFFIXES[0]}").unlink()
    ok = _python_in(tmp_path, "import mxpress.protocol.server as s; print(s.__file__)")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(protocol / "server.py")
