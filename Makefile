# ThreatFlow: every target sets up what it needs (venv, dependencies, tools).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The venv is remade when the pins or the package definition change.
STAMP := $(VENV)/.installed-$(shell cat shared/pyproject.toml requirements/dev.txt | sha256sum | cut -c1-12)
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

.PHONY: venv tools run down status test test-unit lint fmt bench clean lock lock-upgrade requirements bundle

## The project venv, installed from the lock: requirements/dev.txt (every extra, pinned with hashes,
## generated from shared/uv.lock), then the shared package itself, editable, without dependencies.
venv: $(STAMP)

$(STAMP): shared/pyproject.toml requirements/dev.txt
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -U pip
	$(BIN)/python -m pip install -q --disable-pip-version-check --require-hashes --no-deps -r requirements/dev.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e shared
	rm -f $(VENV)/.installed-*
	touch $@

## Packaging (README, "Packaging"). After editing shared/pyproject.toml or a function's uses/secrets/extras:
##   make lock          re-resolve shared/uv.lock (keeps existing pins), then rewrite every requirements file
##   make lock-upgrade  the same, moving every pin to the newest version allowed
##   make requirements  rewrite requirements/dev.txt and functions/*/requirements.txt from the lock as it is
##   make bundle        one content-addressed zip per function in dist/
lock: venv
	$(BIN)/uv lock --project shared
	$(BIN)/python scripts/function_requirements.py

lock-upgrade: venv
	$(BIN)/uv lock --project shared --upgrade
	$(BIN)/python scripts/function_requirements.py

requirements: venv
	$(BIN)/python scripts/function_requirements.py

bundle: venv
	$(BIN)/python scripts/bundle_functions.py --out dist/

# checkov pins many libraries that clash with ours, so it lives in its own venv.
tools: $(CHECKOV_STAMP)

$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --disable-pip-version-check "checkov>=3.2"
	touch $@

## The run command: the whole system on 127.0.0.1:$${THREATFLOW_PORT:-8080}.
run: venv
	$(BIN)/threatflow devstack up

down: venv
	$(BIN)/threatflow devstack down

status: venv
	$(BIN)/threatflow devstack status

## The test command: unit, integration and end-to-end tests on this run's own services.
## TEST_WORKERS pytest-xdist workers (each starts its own services), a test file at a time each; 0 runs in-process.
## Files go out in collection order (contract, e2e, integration, unit), not most-tests-first: the long files with
## few tests (the bundle venvs: ~90 s on a fresh clone) start early, and the many short unit files fill the end.
TEST_WORKERS ?= 2
test:  # the two venvs are independent: built side by side (-j2), which saves CI most of the shorter one
	@$(MAKE) --no-print-directory -j2 venv tools
	CHECKOV_BIN=$(CURDIR)/$(CHECKOV_VENV)/bin/checkov $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-unit: venv
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check shared functions tests scripts
	$(BIN)/ruff format --check shared functions
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache pyproject.toml

fmt: venv
	$(BIN)/ruff format shared functions
	$(BIN)/ruff check --fix shared functions tests scripts

bench: venv
	@for script in tests/perf/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .venv-bundles .devstack dist
