# flora — every target installs what it needs first (they depend on the .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
SUPERNODES ?= 10
RUN_CONFIG ?=
BENCH_ARGS ?=

.PHONY: install run test test-fast lint clean bench

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

# Real processes on loopback (scripts/deploy.py): one flower-superlink, SUPERNODES
# flower-supernode processes (3 unless given), TLS with a throw-away CA unless INSECURE=1,
# SuperNode authentication with AUTH=1; RUN_CONFIG goes on top of
# "strategy='flocora' num-server-rounds=3 fraction-train=1.0". Stops everything it started.
DEPLOY_SUPERNODES := $(if $(filter command line environment,$(origin SUPERNODES)),$(SUPERNODES),3)
.PHONY: deploy
deploy: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/deploy.py \
		--supernodes $(DEPLOY_SUPERNODES) --run-config "$(RUN_CONFIG)" \
		$(if $(filter 1,$(INSECURE)),--insecure) $(if $(filter 1,$(AUTH)),--auth)

# The accuracy-vs-bytes sweep (flora_app/bench.py), one flwr run at a time, e.g.
# make bench BENCH_ARGS="--seeds 3" or BENCH_ARGS="--configs fedavg,flocora-q4 --rounds 10".
bench: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m flora_app.bench $(BENCH_ARGS)

test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

test-fast: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m "not e2e"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .flwr .pytest_cache outputs
