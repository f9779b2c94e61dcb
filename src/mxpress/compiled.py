"""The hot path can run compiled by mypyc (setup.py); this says whether it does, and
refuses to import a package with a compiled module whose source changed after it was compiled.

Python imports `name.cpython-*.so` before `name.py`, so after an edit without a rebuild the
old compiled code would run, silently. setup.py records the SHA-256 of each source it
compiled (`_compiled_sources.json` in the package folder); the sources must still match.
Hashes, not file times: an installed wheel's files all get the time of installation.
"""

from __future__ import annotations

import hashlib
import json
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType

from mxpress.errors import StaleBuildError

# Written by setup.py in the package folder: {compiled file's path in it: sha256 of source}.
RECORD = "_compiled_sources.json"


def is_compiled(module: ModuleType) -> bool:
    """True when `module` was loaded from a compiled extension, not from its source."""
    return (module.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))


def check_fresh(package_dir: Path) -> None:
    """Raise StaleBuildError unless every compiled module under `package_dir` was compiled
    from the source now beside it."""
    suffix = EXTENSION_SUFFIXES[0]  # this interpreter's own ABI tag; others are not loaded
    compiled = sorted(package_dir.rglob(f"*{suffix}"))
    if not compiled:
        return
    try:
        record = json.loads((package_dir / RECORD).read_text())
    except (OSError, ValueError) as exc:
        what = f"its record of the compiled sources is unreadable ({exc})"
        raise _stale(package_dir, what) from exc
    for module in compiled:
        source = module.with_name(module.name.removesuffix(suffix) + ".py")
        if not source.exists():
            continue  # the shared library, which has no source of its own
        key = module.relative_to(package_dir).as_posix()
        if key not in record:
            raise _stale(package_dir, f"{module} is not of this build (left from another?)")
        if record[key] != hashlib.sha256(source.read_bytes()).hexdigest():
            raise _stale(package_dir, f"{source} changed after it was compiled into {module.name}")


def _stale(package_dir: Path, what: str) -> StaleBuildError:
    return StaleBuildError(
        f"{what}; rebuild with `make native`, or delete the compiled .so files of "
        f"{package_dir} to run the sources"
    )
