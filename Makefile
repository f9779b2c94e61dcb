# The two commands: `make run` (the relay, with a local sink) and `make test`.
# `make demo` sends real mail through a local server with the library.
# The interpreter .venv is made with: scripts/pick-python prefers the system's optimized build.
PYTHON ?= $(shell sh scripts/pick-python)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The hot path compiled with mypyc (setup.py; MXPRESS_COMPILE=0 for pure Python). Rebuilt
# whenever one of its sources (pyproject.toml's [tool.mxpress.compiled]) changes; a stale
# build refuses to import (mxpress/compiled.py).
NATIVE := $(VENV)/.native-stamp
COMPILED_SOURCES := $(shell awk -F'"' '/^\[tool.mxpress.compiled\]/ {on = 1} \
	on && /^\]/ {on = 0} on && /"mxpress\./ {gsub(/\./, "/", $$2); print "src/" $$2 ".py"}' pyproject.toml)

.PHONY: run demo test test-pure native lint typecheck bench bench-wan clean

# The compiled modules and their record, wherever a build left them.
define remove-compiled
	find src/mxpress -name '*.so' -delete
	rm -f src/mxpress/_compiled_sources.json src/mxpress/protocol/_compiled_sources.json
endef

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	MXPRESS_COMPILE=0 $(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# --force: all recompiled, none left from an older build.
$(NATIVE): $(STAMP) setup.py $(COMPILED_SOURCES)
	$(remove-compiled)
	$(PY) setup.py -q build_ext --inplace --force || { echo "make: compiling the listed \
	modules failed: it needs a C compiler and the Python headers (Debian: apt install gcc \
	python3-dev); MXPRESS_COMPILE=0 make clean $(MAKECMDGOALS) builds pure Python" >&2; exit 1; }
	touch $(NATIVE)

native: $(NATIVE)

run: $(NATIVE)
	$(PY) scripts/run_relay.py

demo: $(NATIVE)
	$(PY) scripts/demo.py

# All tests on the compiled modules, then all again on their pure-Python sources.
test: $(NATIVE) lint typecheck
	$(VENV)/bin/pytest -q
	$(MAKE) --no-print-directory test-pure

test-pure: $(STAMP)
	rm -rf build/pure && mkdir -p build/pure && cp -r src/mxpress build/pure/
	find build/pure -name '*.so' -delete
	MXPRESS_COMPILE=0 PYTHONPATH=build/pure $(VENV)/bin/pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench scripts setup.py
	$(VENV)/bin/ruff format --check src tests bench scripts setup.py

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(NATIVE)
	$(PY) bench/smtp_throughput.py

bench-wan: $(NATIVE)
	$(PY) bench/smtp_wan.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build
	$(remove-compiled)
