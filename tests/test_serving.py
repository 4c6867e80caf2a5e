"""Online scoring: `mlflow models serve` of the champion CLV model answers like the batch stage.

The clv stage runs once on the CDNOW sample (the `project` fixture of tests/test_clv_stage.py),
its registered version gets the `champion` alias, and the model is served over HTTP from the
registry with the project's own environment (--env-manager local).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipelines import files
from pipelines.catalog import Catalog
from tests.test_clv_stage import HORIZON, project, read  # noqa: F401  (project: module fixture)

ALIAS = "champion"
OUTPUT_COLUMNS = ["p_alive", "expected_purchases", "p_no_purchase", "expected_avg_spend", "clv"]
INPUT_COLUMNS = ["customer_id", "frequency", "recency", "T", "monetary_value", "cutoff"]
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0


# --------------------------------------------------------------------------- server


def free_local_port() -> int:
    """A TCP port on 127.0.0.1 that is free now; skips the module when none can be bound."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    except OSError as exc:
        pytest.skip(f"cannot bind a TCP port on 127.0.0.1 for the model server: {exc}")


def store_uri(root: Path) -> str:
    return f"sqlite:///{root / 'tracking' / 'mlflow.db'}"


def server_env(uri: str) -> dict[str, str]:
    """This environment with the project's MLflow store and the venv's bin first on PATH."""
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    return env


def wait_until_up(proc: subprocess.Popen, base_url: str, stderr_file: Path) -> None:
    """Poll GET /ping until it answers 200; fail with the server's stderr on exit or timeout."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"model server exited with code {proc.returncode}:\n{stderr_file.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"model server not up after {START_TIMEOUT_S:.0f} s:\n{stderr_file.read_text()[-4000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it if it has not exited in time."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)


@contextlib.contextmanager
def serving(model_dir: Path, root: Path, uri: str, logs: Path) -> Iterator[str]:
    """`mlflow models serve` of the version a stage registered (its registration.json under
    ``root / model_dir``), after giving it the champion alias; yields the base URL."""
    reg = files.read_json(Catalog.registration_file(root / model_dir))
    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(reg["name"], ALIAS, reg["version"])
    port = free_local_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"), "models", "serve",
        "-m", f"models:/{reg['name']}@{ALIAS}", "--env-manager", "local",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with open(logs / "stdout.txt", "wb") as out, open(logs / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(command, cwd=root, env=server_env(uri), stdout=out, stderr=err, start_new_session=True)
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_until_up(proc, base_url, logs / "stderr.txt")
        yield base_url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def server(project, tmp_path_factory):  # noqa: F811
    """Base URL of `mlflow models serve` on models:/cvp-clv@champion (the clv stage's version)."""
    root, _ = project
    with serving(Catalog(root).CLV_MODEL_DIR, root, store_uri(root), tmp_path_factory.mktemp("model_server")) as base_url:
        yield base_url


# --------------------------------------------------------------------------- requests


def request_body(features: pd.DataFrame, params: dict | None = None) -> dict:
    """A `dataframe_split` request with the model's input columns (cutoff as an ISO date)."""
    rows = [
        [str(r.customer_id), int(r.frequency), float(r.recency), float(r.T), float(r.monetary_value),
         pd.Timestamp(r.cutoff).date().isoformat()]
        for r in features.itertuples(index=False)
    ]  # fmt: skip
    body: dict = {"dataframe_split": {"columns": INPUT_COLUMNS, "data": rows}}
    if params is not None:
        body["params"] = params
    return body


def invoke(base_url: str, body: dict) -> pd.DataFrame:
    """POST /invocations and return the predictions as a frame."""
    request = urllib.request.Request(
        f"{base_url}/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        pytest.fail(f"/invocations answered {exc.code}: {exc.read().decode(errors='replace')[:2000]}")
    return pd.DataFrame(payload["predictions"])


@pytest.fixture(scope="module")
def customers(project) -> pd.DataFrame:  # noqa: F811
    """Three one-time and three repeat customers of features_t0, in customer_id order."""
    _, features = project
    f0 = features[0]
    picked = f0.groupby(f0["frequency"] > 0, sort=True).head(3)
    return picked.sort_values("customer_id", ignore_index=True)


def batch_predictions(root: Path, ids: pd.Series) -> pd.DataFrame:
    batch = read(root, Catalog(root).clv_predictions_at(0)).set_index("customer_id")
    return batch.loc[ids.tolist()].reset_index()


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("params", [None, {"horizon_days": HORIZON}], ids=["default-params", "explicit-horizon"])
def test_served_champion_equals_the_batch_predictions(project, server, customers, params):  # noqa: F811
    root, _ = project
    served = invoke(server, request_body(customers, params))
    expected = batch_predictions(root, customers["customer_id"])
    assert served["customer_id"].astype(str).tolist() == customers["customer_id"].tolist()
    np.testing.assert_allclose(
        served[OUTPUT_COLUMNS].to_numpy(float), expected[OUTPUT_COLUMNS].to_numpy(float), rtol=1e-9, atol=0
    )


def test_horizon_days_param_changes_expected_purchases(server, customers):
    short = invoke(server, request_body(customers, {"horizon_days": HORIZON}))
    long = invoke(server, request_body(customers, {"horizon_days": 2 * HORIZON}))
    # More days in the window: strictly more expected purchase days, no smaller P(no purchase) complement.
    assert (long["expected_purchases"] > short["expected_purchases"]).all()
    assert (long["p_no_purchase"] <= short["p_no_purchase"]).all()
    # P(alive) is a statement about now, not about the window.
    np.testing.assert_allclose(long["p_alive"], short["p_alive"], rtol=1e-12)
