"""The hot path runs compiled (mypyc) unless MXPRESS_COMPILE=0, and a compiled module
whose source changed since is refused rather than silently run."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import mxpress
from mxpress.compiled import RECORD, check_fresh, is_compiled
from mxpress.errors import MxpressError, StaleBuildError

ROOT = Path(__file__).parent.parent
PACKAGE = Path(mxpress.__file__).parent  # the one imported: src/, or make test-pure's copy


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


@pytest.mark.parametrize(
    "name",
    [
        # They check the types of their callers' arguments themselves (a bool is not a
        # size), which compiled argument checks and unboxing would do first, differently.
        "mxpress.protocol.commands",
        "mxpress.pool.pool",
        "mxpress.server.submission",
        # Users may subclass the Mailer; interpreted classes cannot subclass compiled ones.
        "mxpress.mailer",
    ],
)
def test_the_modules_left_out_run_their_sources(name: str) -> None:
    assert not is_compiled(importlib.import_module(name))
    assert name not in compiled_modules()


def _fake_build(package: Path, name: str, source_text: str) -> Path:
    """A stand-in compiled module for `name` (a path in `package`, without ".py"),
    recorded as compiled from `source_text`."""
    compiled = package / f"{name}{EXTENSION_SUFFIXES[0]}"
    compiled.write_bytes(b"\x7fELF")
    record_file = package / RECORD
    record = json.loads(record_file.read_text()) if record_file.exists() else {}
    record[compiled.relative_to(package).as_posix()] = hashlib.sha256(
        source_text.encode()
    ).hexdigest()
    record_file.write_text(json.dumps(record))
    return compiled


def test_a_compiled_module_whose_source_changed_is_refused(tmp_path: Path) -> None:
    (tmp_path / "fresh.py").write_text("x = 1\n")
    _fake_build(tmp_path, "fresh", "x = 1\n")
    check_fresh(tmp_path)
    (tmp_path / "edited.py").write_text("x = 2\n")
    _fake_build(tmp_path, "edited", "x = 1\n")
    with pytest.raises(StaleBuildError) as caught:
        check_fresh(tmp_path)
    assert isinstance(caught.value, MxpressError) and isinstance(caught.value, ImportError)
    assert str(tmp_path / "edited.py") in str(caught.value)
    assert "make native" in str(caught.value)


def test_modules_of_one_name_in_two_folders_are_told_apart(tmp_path: Path) -> None:
    # server/connection.py and transport/connection.py are both compiled.
    for folder, text in (("server", "x = 1\n"), ("transport", "x = 2\n")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "connection.py").write_text(text)
        _fake_build(tmp_path, f"{folder}/connection", text)
    check_fresh(tmp_path)
    (tmp_path / "transport/connection.py").write_text("x = 1\n")  # the other one's source
    with pytest.raises(StaleBuildError, match=r"transport/connection\.py changed"):
        check_fresh(tmp_path)


def test_a_compiled_module_the_build_did_not_record_is_refused(tmp_path: Path) -> None:
    # As a wheel built over an old build/ folder held a module no longer on the list.
    (tmp_path / "listed.py").write_text("x = 1\n")
    _fake_build(tmp_path, "listed", "x = 1\n")
    (tmp_path / "dropped.py").write_text("x = 1\n")
    (tmp_path / f"dropped{EXTENSION_SUFFIXES[0]}").write_bytes(b"\x7fELF")
    with pytest.raises(StaleBuildError, match=r"dropped\..* is not of this build"):
        check_fresh(tmp_path)


def test_compiled_modules_without_a_record_are_refused(tmp_path: Path) -> None:
    (tmp_path / "server.py").write_text("x = 1\n")
    _fake_build(tmp_path, "server", "x = 1\n")
    (tmp_path / RECORD).write_text("{not json")
    with pytest.raises(StaleBuildError, match="unreadable"):
        check_fresh(tmp_path)
    (tmp_path / RECORD).unlink()
    with pytest.raises(StaleBuildError, match="unreadable"):
        check_fresh(tmp_path)


def test_file_times_do_not_matter_and_lone_libraries_pass(tmp_path: Path) -> None:
    # As a wheel installs them: every file gets the time of installation, sources last.
    (tmp_path / "server.py").write_text("x = 1\n")
    compiled = _fake_build(tmp_path, "server", "x = 1\n")
    os.utime(compiled, ns=(1, 1))
    # the shared library (no source of its own) and other interpreters' builds are ignored
    (tmp_path / f"_native__mypyc{EXTENSION_SUFFIXES[0]}").write_bytes(b"\x7fELF")
    (tmp_path / "server.cpython-399-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    check_fresh(tmp_path)


def test_nothing_compiled_needs_no_record(tmp_path: Path) -> None:
    (tmp_path / "server.py").write_text("x = 1\n")
    check_fresh(tmp_path)


def _python_in(path: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(path)}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def test_a_copy_with_new_file_times_imports_as_built(tmp_path: Path) -> None:
    # What broke the first wheel: sources installed after their compiled modules. A copy
    # with every source newer than the compiled files imports them, compiled as built.
    shutil.copytree(PACKAGE, tmp_path / "mxpress", copy_function=shutil.copy)
    for source in (tmp_path / "mxpress").rglob("*.py"):
        os.utime(source)
    run = _python_in(
        tmp_path,
        "import mxpress.protocol.server as s; from mxpress.compiled import is_compiled; "
        "print(s.__file__, is_compiled(s))",
    )
    assert run.returncode == 0, run.stderr
    path, compiled = run.stdout.split()
    assert path.startswith(str(tmp_path / "mxpress/protocol/server."))
    assert compiled == str(os.environ.get("MXPRESS_COMPILE", "1") != "0")


def test_importing_the_package_refuses_a_stale_build(tmp_path: Path) -> None:
    # A copy of the package in which protocol/server.py was edited after its (stand-in)
    # compiled module was built: importing any of it must fail, naming the file, before
    # loading any compiled module.
    shutil.copytree(PACKAGE, tmp_path / "mxpress")
    package = tmp_path / "mxpress"
    for built in package.rglob("*.so"):
        built.unlink()
    (package / RECORD).unlink(missing_ok=True)
    original = (package / "protocol/server.py").read_text()
    stand_in = _fake_build(package, "protocol/server", original)
    (package / "protocol/server.py").write_text(original + "# edited\n")
    for module in ("mxpress.protocol.server", "mxpress.delivery.scheduler"):
        run = _python_in(tmp_path, f"import {module}")
        assert run.returncode != 0
        assert "StaleBuildError" in run.stderr and "protocol/server.py changed" in run.stderr

    # Without the compiled module, the same copy imports its source.
    stand_in.unlink()
    ok = _python_in(tmp_path, "import mxpress.protocol.server as s; print(s.__file__)")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(package / "protocol/server.py")
