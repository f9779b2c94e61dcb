# The two commands: `make run` (the relay, with a local sink) and `make test`.
# `make demo` sends real mail through a local server with the library.
# The interpreter .venv is made with: scripts/pick-python prefers the system's optimized build.
PYTHON ?= $(shell sh scripts/pick-python)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run demo test lint typecheck bench bench-wan clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) scripts/run_relay.py

demo: $(STAMP)
	$(PY) scripts/demo.py

test: $(STAMP) lint typecheck
	$(VENV)/bin/pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/smtp_throughput.py

bench-wan: $(STAMP)
	$(PY) bench/smtp_wan.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
