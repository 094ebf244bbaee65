# The two commands of the README: `make train` (the main job) and `make test` (the suite).
# Both create the virtual environment .venv from the project's own files when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: train demo test lint bench clean-venv

$(VENV)/.installed: pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements-dev.txt -e .
	touch $@

train: $(VENV)/.installed
	$(BIN)/balancedet train

demo: $(VENV)/.installed
	$(BIN)/balancedet demo

lint: $(VENV)/.installed
	$(BIN)/ruff check balancedet tests

test: lint
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/balancedet bench losses
	$(BIN)/balancedet bench assign
	$(BIN)/balancedet bench detector

clean-venv:
	rm -rf $(VENV)
