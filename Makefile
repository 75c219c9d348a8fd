# flora — every target installs what it needs first (they depend on the .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
SUPERNODES ?= 10
RUN_CONFIG ?=

.PHONY: install run test test-fast lint clean

install: $(VENV)/.installed

# torch first, pinned to the CPU wheel on disk: an open range would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

run: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/run_simulation.py \
		--supernodes $(SUPERNODES) --run-config "$(RUN_CONFIG)"

test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

test-fast: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m "not e2e"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .flwr .pytest_cache outputs
