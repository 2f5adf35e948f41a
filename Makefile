# Palisade: `make run` starts the suite on its embedded default; `make test` runs the tests.
# Everything is bootstrapped from the committed uv.lock on first use.

PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
PROTOS := $(shell find protos -name '*.proto')
STUBS_STAMP := libs/api/src/palisade_api/.generated
MEMBER_PYPROJECTS := $(wildcard libs/*/pyproject.toml services/*/pyproject.toml)

.PHONY: all bootstrap gen run test test-unit lint fmt bench lock clean

all: bootstrap

bootstrap: $(VENV)/.synced $(STUBS_STAMP)

# uv itself, pinned, in a private tools venv (nothing installed system-wide).
$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The project venv, exactly as uv.lock says (fails if the lock is out of date).
$(VENV)/.synced: $(UV) uv.lock pyproject.toml $(MEMBER_PYPROJECTS)
	$(UV) sync --frozen --all-packages --python $(PYTHON)
	touch $@

# Python stubs (with .pyi type stubs) from protos/, never committed.
$(STUBS_STAMP): $(VENV)/.synced $(PROTOS) tools/gen_protos.py
	$(PY) tools/gen_protos.py
	touch $@

gen: $(VENV)/.synced
	$(PY) tools/gen_protos.py
	touch $(STUBS_STAMP)

run: bootstrap
	$(PY) tools/run_suite.py

# Tests run in parallel worker processes (pytest-xdist); each worker owns its own Redis database
# (conftest.py) and every test its own Postgres database, so workers never share state.
# PYTEST_WORKERS=0 runs serially (e.g. to debug one test).
PYTEST_WORKERS ?= 4
test: bootstrap
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test-unit: bootstrap
	$(VENV)/bin/pytest -m 'not postgres and not redis' libs/*/tests/unit services/*/tests/unit

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy libs/common/src $(wildcard services/*/src) tools

fmt: bootstrap
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# P10's peer (FastAPI-Users) has its own project, lock and venv (bench/peers/fastapi_users/.venv).
bench: bootstrap
	$(UV) sync --frozen --project bench/peers/fastapi_users --python $(PYTHON)
	$(PY) bench/run.py

# Re-resolve dependencies after editing a pyproject.toml; commit the new uv.lock.
lock: $(UV)
	$(UV) lock

clean:
	rm -rf $(VENV) $(TOOLS) $(STUBS_STAMP) .pytest_cache .mypy_cache .ruff_cache
	find libs/api/src/palisade_api -mindepth 1 ! -name __init__.py -exec rm -rf {} +
