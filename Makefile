# The two commands a newcomer needs: `make run` and `make test`. Both create the virtual
# environment on first use (and again whenever pyproject.toml changes).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run import test bench lint venv clean web

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

## make test: unit and integration tests against a real RabbitMQ
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## make bench [QUICK=1]: benchmarks, each against a baseline measured in the same run
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench $(if $(QUICK),--quick)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info web/node_modules
