"""Compiles the hot path with mypyc: the modules listed in pyproject.toml under
[tool.mxpress.compiled]. MXPRESS_COMPILE=0 builds pure Python (no C compiler needed).

In the package folder it writes the SHA-256 of each source it compiled (mxpress/compiled.py
refuses to import a package with a compiled module whose source has changed since).
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
        if not self.extensions:
            return
        # The package's own folder, in place or in the wheel; keys are paths inside it
        # (two modules may share a name: server/connection.py, transport/connection.py).
        package = Path(self.get_ext_fullpath("mxpress.x")).parent
        record = {}
        for source in compiled_sources():
            name = source.removeprefix("src/").removesuffix(".py").replace("/", ".")
            compiled = Path(self.get_ext_fullpath(name))
            key = compiled.relative_to(package).as_posix()
            record[key] = hashlib.sha256((ROOT / source).read_bytes()).hexdigest()
        (package / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


setup(ext_modules=ext_modules(), cmdclass={"build_ext": BuildExtRecordingSources})
