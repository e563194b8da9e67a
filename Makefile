# Two commands on a fresh machine: `make demo` (the offline shapes-world demo) and `make test`.
# Each creates .venv and installs what is missing; both are quick once it exists.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
UPSTREAM_TESTS := tests/transformers_upstream/.version
OPEN_CLIP_REFERENCE := tests/open_clip_upstream/.version

.PHONY: demo demo-full test lint env browser app
# Root installs directly (CI); anyone else goes through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

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

# The web demo's test drives a real headless browser: Debian's chromium and its driver, installed when missing.
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium chromium-driver; }

# open_clip's ModifiedResNet, the reference of the CLIP ResNet test (open_clip itself needs torchvision): from its wheel.
$(OPEN_CLIP_REFERENCE): $(STAMP)
	$(PY) tests/open_clip_upstream/fetch.py

test: $(STAMP) $(UPSTREAM_TESTS) $(OPEN_CLIP_REFERENCE) browser
	$(PY) -m pytest -q $(ARGS)

# The web demo on the model `make demo` trained (ARGS="--model DIR" for another).
app: $(STAMP)
	$(PY) -m demo.app $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
