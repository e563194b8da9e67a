# Two commands on a fresh machine: `make demo` (the offline shapes-world demo) and `make test`.
# Each creates .venv and installs what is missing; both are quick once it exists.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
UPSTREAM_TESTS := tests/transformers_upstream/.version

.PHONY: demo demo-full test lint env

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel of torch 2.13.0 lies on these machines; a bare `torch` could pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0 || $(PY) -m pip install -q torch
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(PY) -m demo.run_demo $(ARGS)

demo-full: $(STAMP)
	$(PY) -m demo.run_demo --full $(ARGS)

# transformers' own generic test mixins are not in its wheel: fetched once from its source distribution.
$(UPSTREAM_TESTS): $(STAMP)
	$(PY) tests/transformers_upstream/fetch.py

test: $(STAMP) $(UPSTREAM_TESTS)
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
