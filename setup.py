"""Compiles the protocol core with mypyc: the modules listed in pyproject.toml under
[tool.mxpress.compiled]. MXPRESS_COMPILE=0 builds pure Python (no C compiler needed).

Beside the compiled modules it writes the SHA-256 of each source they were compiled from
(mxpress/compiled.py refuses to import a compiled module whose source has changed since).
Everything else about the package is in pyproject.toml.
"""

import hashlib
import json
import os
import tomllib
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent
RECORD = "_compiled_sources.json"  # the name mxpress/compiled.py reads


def compiled_sources() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    modules = config["tool"]["mxpress"]["compiled"]["modules"]
    return ["src/" + name.replace(".", "/") + ".py" for name in modules]


def ext_modules() -> list[object]:
    if os.environ.get("MXPRESS_COMPILE", "1") == "0":
        return []
    from mypyc.build import mypycify  # a build requirement (pyproject.toml)

    # One shared library inside the package, not a top-level module named by a hash.
    return list(mypycify(compiled_sources(), opt_level="3", group_name="mxpress.protocol._native"))


class BuildExtRecordingSources(build_ext):
    """build_ext, then the record of which source each compiled module was built from."""

    def run(self) -> None:
        super().run()
        built = [Path(self.get_ext_fullpath(ext.name)) for ext in self.extensions]
        if not built:
            return
        record_file = built[0].parent / RECORD  # in the package: in place, or in the wheel
        record = json.loads(record_file.read_text()) if record_file.exists() else {}
        for source in compiled_sources():
            path = ROOT / source
            compiled = next(p for p in built if p.name.startswith(path.stem + "."))
            record[compiled.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        record_file.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


setup(ext_modules=ext_modules(), cmdclass={"build_ext": BuildExtRecordingSources})
