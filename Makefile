# The two commands a newcomer needs: `make run` and `make test`. Both create the virtual
# environment on first use (and again whenever pyproject.toml changes).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run import chaos test test-local test-containers images bench lint venv clean web

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@touch $@

venv: $(STAMP)

## make run [CLUSTER=1]: broker, auth service and relay on this machine; Ctrl-C stops all
run: $(STAMP)
	$(BIN)/python -m web.bundle ensure
	$(BIN)/python -m deploy.run $(if $(CLUSTER),--cluster)

## make web: rebuild the web client (web/dist, committed) after changing web/src or protocol/
web: $(STAMP)
	$(BIN)/python -m web.bundle build

## make import FILE=users.json [CLUSTER=1]: import users into the running `make run`
import: $(STAMP)
	$(if $(FILE),,$(error give the file: make import FILE=users.json))
	$(BIN)/python -m deploy.import_users $(FILE) $(if $(CLUSTER),--cluster)

## make chaos [ROUNDS=1] [RATE=5] [CLUSTER=1]: SIGKILL the relay, auth service and broker
## node of a `make run` under traffic, ROUNDS times each (CLUSTER=1: then a node of a
## three-node `make run CLUSTER=1`); writes docs/reliability.md
chaos: $(STAMP)
	$(BIN)/python -m deploy.chaos --rounds $(or $(ROUNDS),1) --rate $(or $(RATE),5) $(if $(CLUSTER),--cluster)

## make test [START_DOCKER=1]: the private-node suite (unit + integration on RabbitMQ 3.10),
## then the container suites (integration on RabbitMQ 4 in a container, compose end to end)
## where a Docker engine answers; START_DOCKER=1 (root) installs and starts one, as CI does.
## PYTEST_ARGS runs only the private-node suite, with those arguments.
test: test-local
	@$(if $(PYTEST_ARGS),echo "container tests skipped: PYTEST_ARGS selects tests",START_DOCKER=$(START_DOCKER) bash tests/containers/run.sh)

test-local: $(STAMP)
	MESSENGER_TEST_BROKER=local $(BIN)/python -m pytest $(PYTEST_ARGS)

test-containers: $(STAMP)
	START_DOCKER=$(START_DOCKER) bash tests/containers/run.sh

## make images: the local images compose.yaml and the container tests use (no registry)
images:
	bash deploy/images/build-local.sh

## make bench [QUICK=1]: benchmarks, each against a baseline measured in the same run
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench $(if $(QUICK),--quick)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info web/node_modules
