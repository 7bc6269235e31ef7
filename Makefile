# Every target creates its own virtualenv on first use: a fresh machine needs only Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?=

.PHONY: run test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/trailkeeper run $(if $(CONFIG),--config $(CONFIG),)

test: $(BIN)/.installed
	$(BIN)/ruff check daemon tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q -n 2 --dist loadfile

bench: $(BIN)/.installed
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) var
