# Two commands on a fresh machine (python3.11, make, git): `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: env run test test-all bench lock clean

env: $(STAMP)

# The environment is rebuilt whenever the lock file or the project metadata changes.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

## Run the whole pipeline on the configured data (default: bundled CDNOW).
run: env
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@$(BIN)/python -m pipelines.summary

## Default test suite (slow tests excluded).
test: env
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n 2 -q

## Every test, including the slow ones.
test-all: env
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n 2 -q -m ""

## Benchmarks (prints ratios against the lifetimes route; writes bench/results.json).
bench: env
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench.run

## Regenerate requirements.lock from requirements.in (needs network access to PyPI).
lock:
	$(PYTHON) -m venv /tmp/cvp-lock-venv && /tmp/cvp-lock-venv/bin/pip install --quiet uv
	/tmp/cvp-lock-venv/bin/uv pip compile requirements.in --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --generate-hashes -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
