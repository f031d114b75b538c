# Patron developer entry points. `make demo` and `make test` are the two commands a user needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# pytest-xdist workers for `make test`: e2e tests mostly wait on time windows, so two test beds
# (one per worker, see tests/conftest.py) halve the wall time. PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2
XDIST = -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: help venv tools testbed-up testbed-down lint typecheck crd unit test test-fast test-image demo clean

help:
	@echo "make demo       - the whole story on a local test bed (see README.md)"
	@echo "make test       - lint, type check and every test (unit, Prometheus, e2e)"
	@echo "make test-fast  - unit tests and fast e2e tests (-m 'not slow')"
	@echo "make test-image - build the container image with buildah and run it on the test bed"
	@echo "make tools      - build the pinned test-bed binaries (kube-apiserver, kwok, helm, etcd)"
	@echo "make testbed-up / testbed-down"

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

tools:
	hack/tools.sh build

testbed-up: venv tools
	hack/testbed.sh up

testbed-down:
	hack/testbed.sh down

lint: venv
	$(VENV)/bin/ruff check operator tests hack
	$(VENV)/bin/ruff format --check operator tests hack
	$(VENV)/bin/lint-imports --no-cache

typecheck: venv
	$(VENV)/bin/mypy

crd: venv
	$(PY) -m patron.api.crd --write

unit: venv
	$(VENV)/bin/pytest -m "unit" $(PYTEST_ARGS)

# The image tests (-m image) build the container image (minutes, needs buildah): make test-image.
test: venv tools lint typecheck
	$(VENV)/bin/pytest $(XDIST) -m "not image" $(PYTEST_ARGS)

test-fast: venv tools
	$(VENV)/bin/pytest $(XDIST) -m "not slow and not image" $(PYTEST_ARGS)

test-image: venv tools
	$(VENV)/bin/pytest -m image $(PYTEST_ARGS)

demo: venv tools
	hack/demo.sh $(DEMO_ARGS)

clean:
	hack/demo.sh down || true
	hack/testbed.sh down || true
	for d in .testbed-gw*; do [ -d "$$d" ] && PATRON_TESTBED_DIR=$$PWD/$$d hack/testbed.sh down || true; done
	rm -rf $(VENV) .testbed .testbed-* .testbed-up.lock .pytest_cache .mypy_cache .ruff_cache
