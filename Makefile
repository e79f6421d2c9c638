# The two commands of the README: `make qualify` and `make test`. Both set up .venv first.
# Set-up is idempotent: pip runs again only when pyproject.toml or the install fixes change.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
MATRIX ?= smoke-cpu
PYTEST_ARGS ?=

.PHONY: install chromium test unit qualify plan lint clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml harness/install_fixes.py | $(PY)
	$(PY) -m pip install -q -e '.[cpu,test]'
	$(PY) -m harness.install_fixes
	touch $(STAMP)

install: $(STAMP) chromium

# Debian's chromium for the report's browser tests (no browser download at run time); skipped
# when it is there. Needs root or sudo, as apt-get does.
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	else $$( [ "$$(id -u)" = 0 ] || echo sudo ) sh -c 'apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium'; fi

test: install
	$(PY) -m ruff check harness suites tests benchmarks conftest.py
	$(PY) -m mypy
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest tests $(PYTEST_ARGS)

unit: install
	$(PY) -m pytest tests -m "not integration" $(PYTEST_ARGS)

qualify: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest suites --matrix $(MATRIX) $(PYTEST_ARGS)

plan: install
	$(PY) -m pytest suites --matrix $(MATRIX) --plan -q

lint: install
	$(PY) -m ruff check .

clean-venv:
	rm -rf $(VENV)
