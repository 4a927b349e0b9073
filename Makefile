# Two commands do all the set-up on a fresh machine (see README.md):
#   make run    install into .venv, fetch SmolLM2-135M-Instruct, serve on 127.0.0.1:8000
#   make test   install into .venv (with test tools), then lint, type-check and test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install model run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstalled whenever pyproject.toml changes. torch==2.13.0 is the CPU wheel.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

model: install
	$(BIN)/loraswap model fetch

# Without LORASWAP_ADMIN_TOKEN in the environment this is a development run (--dev: the
# /admin API is open); with it, the service runs as in production.
run: model
	LORASWAP_DRIFT_ENABLED=$${LORASWAP_DRIFT_ENABLED:-true} $(BIN)/loraswap serve $(if $(LORASWAP_ADMIN_TOKEN),,--dev)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# scripts/test-tools.sh: checkov (own venv) and Debian's prometheus and alertmanager
# (apt-get install as root; else unpacked into .venv-tools/debian/root, put on PATH here).
test: lint
	PYTHON=$(PYTHON) bash scripts/test-tools.sh
	PATH="$(CURDIR)/.venv-tools/debian/root/usr/bin:$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: model
	$(BIN)/loraswap bench engine

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
