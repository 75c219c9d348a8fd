# flora — every target installs what it needs first (they depend on the .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
PIP_VERSION := 26.3
PIP_TOOLS_VERSION := 7.6.2
SUPERNODES ?= 10
RUN_CONFIG ?=
BENCH_ARGS ?=
FUZZ_SECONDS ?= 120
FUZZ_RUNS ?= 0

.PHONY: install run test test-fast lint clean bench fuzz docker-test

install: $(VENV)/.installed

# Exactly the lock file's versions (every direct and transitive dependency), then the project
# itself without touching them. A changed lock rebuilds the venv from scratch, so nothing a
# previous lock installed survives. pip itself is pinned too (the lock does not list it).
$(VENV)/.installed: $(LOCK) pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "pip==$(PIP_VERSION)"
	$(BIN)/pip install --quiet --no-deps -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

# Re-resolve the dependencies deliberately (after editing pyproject.toml). pip-tools rather than
# uv: it resolves with pip itself, so it sees the local wheel folders and the torch cap this
# machine's pip configuration names (uv does not read pip's configuration).
.PHONY: lock
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet "pip-tools==$(PIP_TOOLS_VERSION)"
	.lock-venv/bin/pip-compile --quiet --extra dev --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-find-links --output-file $(LOCK) pyproject.toml
	rm -rf .lock-venv

run: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m flora_tools.run_simulation \
		--supernodes $(SUPERNODES) --run-config "$(RUN_CONFIG)"

# Real processes on loopback (flora_tools/deploy.py): one flower-superlink, SUPERNODES
# flower-supernode processes (3 unless given), TLS with a throw-away CA unless INSECURE=1,
# SuperNode authentication with AUTH=1; RUN_CONFIG goes on top of
# "strategy='flocora' num-server-rounds=3 fraction-train=1.0". Stops everything it started.
DEPLOY_SUPERNODES := $(if $(filter command line environment,$(origin SUPERNODES)),$(SUPERNODES),3)
.PHONY: deploy
deploy: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m flora_tools.deploy \
		--supernodes $(DEPLOY_SUPERNODES) --run-config "$(RUN_CONFIG)" \
		$(if $(filter 1,$(INSECURE)),--insecure) $(if $(filter 1,$(AUTH)),--auth)

# The accuracy-vs-bytes sweep (flora_tools/bench.py), one flwr run at a time, e.g.
# make bench BENCH_ARGS="--seeds 3" or BENCH_ARGS="--configs fedavg,flocora-q4 --rounds 10".
bench: install fashion-mnist
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m flora_tools.bench $(BENCH_ARGS)

# Fashion-MNIST's four idx files from Debian's dataset-fashion-mnist in
# /usr/share/datasets/fashion-mnist: installed with apt-get when missing and running as root
# (CI); otherwise one line names the package and the folder, and the target fails.
.PHONY: fashion-mnist
fashion-mnist: install
	$(BIN)/python -m flora_tools.datasets fashion-mnist

# Coverage-guided fuzzing (atheris) of the decoder, a whole reply, the run-config and
# checkpoint loading: FUZZ_SECONDS per target (or FUZZ_RUNS executions each, when given),
# executions printed; `make test` replays the committed corpus (tests/fuzz_corpus) with a
# short seeded budget.
fuzz: install
	$(BIN)/python -m flora_tools.fuzz --all --seconds $(FUZZ_SECONDS) --runs $(FUZZ_RUNS)

# flora's images built and run for real (flora_tools/docker_test.py): a private dockerd (root;
# Debian's docker.io and debootstrap installed when missing), base images made here without a
# registry, `docker compose up` of docker/compose.yml + with-tls.yml, a 2-round FLoCoRA run
# from the host, the run folder checked; then everything it started is torn down and its
# images deleted. About 10 minutes and 8 GB of disk while it runs.
docker-test: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m flora_tools.docker_test

# The deployment tests (real SuperLink/SuperNode processes, mostly waiting on Flower's polls)
# run in a lane beside the rest (flora_tools/test_lanes.py); their lines start [deployment].
test: install fashion-mnist
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m flora_tools.test_lanes -q --durations=30

test-fast: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m "not e2e"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .lock-venv .flwr .pytest_cache outputs
