"""Compiles the protocol core with mypyc: the modules listed in pyproject.toml under
[tool.mxpress.compiled]. MXPRESS_COMPILE=0 builds pure Python (no C compiler needed).

Everything else about the package is in pyproject.toml.
"""

import os
import tomllib
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent


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


setup(ext_modules=ext_modules())
