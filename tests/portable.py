"""Serve a registered model in a fresh interpreter where this project is not importable.

The interpreter starts without site's .pth files (``python -S``), so the project's editable
install is not on sys.path; only the site-packages directories are. The model must then load
from the code it was logged with (``code_paths``) and its pinned requirements.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pandas as pd

HEAVY = ("pandera", "ibis", "matplotlib", "shap", "pipelines", "duckdb")

_SERVE = """
import json, sys
sys.path[:0] = sys.argv[5].split("|")
import mlflow.pyfunc, pandas as pd
mlflow.set_tracking_uri(sys.argv[1]); mlflow.set_registry_uri(sys.argv[1])
served = mlflow.pyfunc.load_model(sys.argv[2]).predict(pd.read_parquet(sys.argv[3]))
served.reset_index(drop=True).to_parquet(sys.argv[4])
print(json.dumps({"imported": sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[6].split(","))),
                  "models_from": list(sys.modules["models"].__path__)}))
"""


def serve_outside_project(tracking_uri: str, model_uri: str, inputs: pd.DataFrame, workdir: Path) -> tuple[pd.DataFrame, dict]:
    """(the model's answer for ``inputs``, {"imported": heavy packages loaded, "models_from": where
    the ``models`` package came from}) from a fresh interpreter run in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    source, answer = workdir / "inputs.parquet", workdir / "served.parquet"
    inputs.reset_index(drop=True).to_parquet(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "MLFLOW_"))}
    args = [tracking_uri, model_uri, str(source), str(answer), "|".join(site.getsitepackages()), ",".join(HEAVY)]
    done = subprocess.run([sys.executable, "-S", "-c", _SERVE, *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return pd.read_parquet(answer), json.loads(done.stdout.strip().splitlines()[-1])
