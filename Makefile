# The two commands: `make run` (main job on the embedded synthetic default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch that this machine kind carries on disk. A GPU user can override:
#   make run TORCH_SPEC="torch"   (or install their own torch into .venv first: an installed torch is kept)
TORCH_SPEC ?= torch==2.13.0
PROFILE ?= quick
OUT ?= reports/$(PROFILE)

.PHONY: run test lint peers clean-cache

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test]"
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/medsec reproduce --profile $(PROFILE) --out $(OUT)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check medsec tests $(wildcard benchmarks)
	$(VENV)/bin/mypy medsec

# DCMTK, Orthanc and the openssl CLI, the real peers of the interoperability tests: installed where this machine allows
# (Debian/Ubuntu as root); elsewhere the test run ends by listing the skipped tests and how to enable them.
peers:
	@sh tests/install_peers.sh

test: lint peers
	$(VENV)/bin/pytest

clean-cache:
	rm -rf .cache/medsec
