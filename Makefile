# op-dbus: `make demo` shows the main job on the built-in lab system; `make test` runs every test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: venv test test-fast lint demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

test-fast: venv
	$(BIN)/python -m pytest tests/unit -q

test: venv
	$(BIN)/python -m pytest -q -rs

clean:
	rm -rf $(VENV) .pytest_cache
