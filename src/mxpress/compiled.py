"""The protocol core can run compiled by mypyc (setup.py); this says whether it does, and
refuses to import a compiled module older than its source.

Python imports `name.cpython-*.so` before `name.py`, so after an edit without a rebuild the
old compiled code would run, silently. A stat per module at import makes that an error.
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType

from mxpress.errors import StaleBuildError


def is_compiled(module: ModuleType) -> bool:
    """True when `module` was loaded from a compiled extension, not from its source."""
    return (module.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))


def check_fresh(package_dir: Path) -> None:
    """Raise StaleBuildError if a compiled module in `package_dir` is older than its .py."""
    suffix = EXTENSION_SUFFIXES[0]  # this interpreter's own ABI tag; others are not loaded
    for compiled in package_dir.glob(f"*{suffix}"):
        source = compiled.with_name(compiled.name.removesuffix(suffix) + ".py")
        if source.exists() and source.stat().st_mtime_ns > compiled.stat().st_mtime_ns:
            raise StaleBuildError(
                f"{source} changed after it was compiled into {compiled.name}; "
                "rebuild with `make native` (or delete the compiled .so files of "
                f"{package_dir} to run the sources)"
            )
