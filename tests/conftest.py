"""Suite-wide test plumbing: xdist groups that work on pytest 9, and MLflow stores that start from
a migrated template instead of running MLflow's ~30 schema migrations for each new store.

- ``--dist loadgroup`` (make test) sends the tests of one ``xdist_group`` to one worker, so an
  expensive module fixture (a ``dvc repro``) is built once. pytest-xdist 3.8 marks a group by
  appending ``@<group>`` to ``item._nodeid``, which pytest 9 no longer reads (it keeps the node id
  in ``item._id``): the groups were silently ignored and each worker built the fixture
  (pytest-dev/pytest-xdist#1386). :func:`pytest_collection_modifyitems` applies the suffix where
  it is missing. A test without an ``xdist_group`` that uses a module-scoped fixture is grouped
  with its module: otherwise its module's tests are spread over both workers and each worker
  builds the fixture (a notebook execution, a model server, a stage run: seconds each).
- Creating a sqlite MLflow store runs every schema migration: 4-10 s per store, and the suite
  creates dozens. The first store of the session is migrated once into a template; every later
  new store (in this process) is a copy of it (SQLite's backup API), the same tables at the same
  schema revision. The ``seed_mlflow_store`` fixture puts the template where a child process (``cvp``,
  ``dvc repro``) will open its store.
- ``OMP_WAIT_POLICY=PASSIVE`` (unless set): LightGBM's OpenMP threads (churn.lightgbm.n_jobs: 2)
  sleep instead of spinning while they wait. With two xdist workers on two cores, spinning
  threads take the CPU the other worker needs: a 300-tree fit took 1.9 s instead of 0.4 s. The
  wait policy changes no result (the same predictions, bit for bit); child processes inherit it.
- ``DVC_NO_ANALYTICS=1`` (unless set): each `dvc` command of a test (``dvc init``, ``dvc repro``)
  would otherwise start a detached ``dvc daemon analytics`` process that imports DVC again and
  sends a usage report; a test run has no report to send.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import pytest

# Read when OpenMP starts (LightGBM's import), so before any test module is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

# --------------------------------------------------------------------------- xdist groups


_SHARED_SCOPES = ("module", "class", "package")


def _shares_a_fixture(item: pytest.Item) -> bool:
    """Whether the test uses a module-, class- or package-scoped fixture (built once per worker
    that runs any of the module's tests)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for name in item.fixturenames:
        defs = info.name2fixturedefs.get(name)
        if defs and defs[-1].scope in _SHARED_SCOPES:
            return True
    return False


def _group_suffix(item: pytest.Item) -> str | None:
    names = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
    if not names and _shares_a_fixture(item):
        names = {item.nodeid.split("::", 1)[0]}  # the module: its shared fixtures are built once
    return "@" + "_".join(sorted(names)) if names else None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist worker with --dist loadgroup, give each grouped test its ``@group`` node id
    suffix; a test without an ``xdist_group`` that uses a module-scoped fixture joins its module's
    group, so that fixture is built by one worker, not by both."""
    if not (hasattr(config, "workerinput") and config.getvalue("loadgroup")):
        return
    for item in items:
        suffix = _group_suffix(item)
        if suffix is None or item.nodeid.endswith(suffix):
            continue
        if hasattr(item, "_id"):  # pytest >= 9: a structured NodeId
            from _pytest.nodeid import NodeId

            item._id = NodeId.parse(item.nodeid + suffix)
        else:
            item._nodeid = item.nodeid + suffix


# --------------------------------------------------------------------------- MLflow store template

_TEMPLATE: dict[str, Path] = {}


def template_db(tmp_path_factory: pytest.TempPathFactory | None = None) -> Path:
    """The migrated, empty MLflow database of this environment (pipelines.tracking: `make env`
    builds it; built here, once, when missing)."""
    if "db" not in _TEMPLATE:
        from pipelines import tracking

        _TEMPLATE["db"] = tracking.prepare_store_template()
    return _TEMPLATE["db"]


def _copy_template_into(engine, template: Path) -> None:
    raw = engine.raw_connection()
    try:
        with sqlite3.connect(template) as source:
            source.backup(raw.driver_connection)
    finally:
        raw.close()


def _install_template(tmp_path_factory: pytest.TempPathFactory) -> None:
    """New sqlite stores opened by this process start as copies of the template."""
    from mlflow.store.db import utils
    from mlflow.store.model_registry import sqlalchemy_store as registry_store

    if hasattr(utils._initialize_tables, "__wrapped__"):
        return
    original = utils._initialize_tables
    template = template_db(tmp_path_factory)

    def initialize_from_template(engine) -> None:
        if engine.url.get_backend_name() != "sqlite":
            return original(engine)
        _copy_template_into(engine, template)

    initialize_from_template.__wrapped__ = original
    utils._initialize_tables = initialize_from_template
    if getattr(registry_store, "_initialize_tables", None) is original:
        registry_store._initialize_tables = initialize_from_template


def _install_if_imported(tmp_path_factory: pytest.TempPathFactory) -> None:
    if "mlflow" in sys.modules:
        _install_template(tmp_path_factory)


@pytest.fixture(scope="session", autouse=True)
def _mlflow_store_template_session(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Install the template before any fixture runs, when the collected modules import MLflow."""
    _install_if_imported(tmp_path_factory)


@pytest.fixture(autouse=True)
def _mlflow_store_template(tmp_path_factory: pytest.TempPathFactory) -> None:
    """... or once a test imported it."""
    _install_if_imported(tmp_path_factory)


@pytest.fixture(scope="session")
def seed_mlflow_store(tmp_path_factory: pytest.TempPathFactory):
    """``seed(db)``: copy the template to ``db`` (e.g. ``<project>/tracking/mlflow.db``, where a
    child process will open its store) unless a store is there; returns ``db``."""
    import shutil

    template = template_db(tmp_path_factory)

    def seed(db: Path) -> Path:
        db.parent.mkdir(parents=True, exist_ok=True)
        if not db.exists():
            shutil.copyfile(template, db)
        return db

    return seed
