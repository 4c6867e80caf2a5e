# Two commands on a fresh machine (python3.11, make, git): `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: env env-spark run run-spark test test-all bench lock clean retrain

env: $(STAMP)

# The environment is rebuilt whenever the lock file or the project metadata changes.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@# An empty MLflow store, migrated once here: a project's first run copies it (seconds saved).
	$(BIN)/python -c "from pipelines.tracking import prepare_store_template; prepare_store_template()"
	@touch $@

SPARK_STAMP := $(VENV)/.installed-spark

## The spark extra (pyspark, py4j; needs Java 17+) on top of `make env`.
env-spark: $(SPARK_STAMP)

$(SPARK_STAMP): $(STAMP) requirements-spark.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements-spark.lock
	@touch $@

## Run the whole pipeline on the configured data (default: bundled CDNOW). params.yaml is
## checked first: DVC cannot read some YAML values (an unquoted date) and says so only cryptically.
## The last DVC stage (`cvp notebook`) executes notebooks/explore.ipynb into reports/explore.html.
## `cvp warm` runs the stages in forks of one process that imported the libraries once
## (pipelines/warm.py; CVP_WARM=0: each stage in a process of its own, as a plain `dvc repro`).
## The check runs again only when params.yaml (or the environment) changed since it last passed.
PARAMS_CHECKED := .dvc/tmp/params-checked

$(PARAMS_CHECKED): params.yaml $(STAMP)
	$(BIN)/cvp check-params
	@mkdir -p $(@D) && touch $@

run: env $(PARAMS_CHECKED)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/cvp warm $(BIN)/dvc repro
	@$(BIN)/python -m pipelines.summary

## The pipeline with the features stage on Spark (features.engine: pyspark for this run only;
## master local[2] unless CVP_SPARK_MASTER or features.spark_master say otherwise). Spark's
## features are byte-identical to DuckDB's, so DVC sees the same outputs.
run-spark: env-spark
	$(BIN)/cvp check-params
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro ingest
	$(BIN)/python -c "import yaml; p = yaml.safe_load(open('params.yaml')); p['features']['engine'] = 'pyspark'; yaml.safe_dump(p, open('.dvc/tmp/params-spark.yaml', 'w'), sort_keys=False)"
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/cvp features --params .dvc/tmp/params-spark.yaml
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc commit --force features
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@$(BIN)/python -m pipelines.summary

## Scheduled retraining: drift checks, champion/challenger gate, export only when promoted
## (docs/retrain.md). `make retrain RETRAIN_ARGS=--force-promote` records an override.
## `cvp retrain` checks params.yaml (as `cvp check-params` does) before its `dvc repro`.
retrain: env
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/cvp retrain $(RETRAIN_ARGS)

## Default test suite (slow tests excluded).
test: env
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n 2 --dist loadgroup -q

## Every test, including the slow ones.
test-all: env
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -n 2 --dist loadgroup -q -m ""

## Benchmarks at 1M and 10M transactions: dvc repro, the plain lifetimes route, features on Spark
## (prints wall time, peak memory, ratios; writes bench/results.json). Out of core at 100M:
## make bench BENCH_ARGS="--sizes 1e8 --features-only"
bench: env-spark
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench.run $(BENCH_ARGS)

## Regenerate requirements.lock from requirements.in (needs network access to PyPI).
lock:
	$(PYTHON) -m venv /tmp/cvp-lock-venv && /tmp/cvp-lock-venv/bin/pip install --quiet uv
	/tmp/cvp-lock-venv/bin/uv pip compile requirements.in --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --generate-hashes -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
