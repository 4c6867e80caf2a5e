"""The catalog: every artifact the stages pass between them, declared once, with its producer.

Each :class:`Artifact` names its path (relative to the project root), the stage that writes it,
the stages that read it, its pandera contract (a name in :mod:`pipelines.contracts`) and the DVC
output that holds it. ``dvc.yaml`` must agree: a stage's ``outs``/``metrics``/``plots`` are the
DVC outputs of what it produces, and its data ``deps`` those of what it reads
(``tests/test_catalog.py`` checks both).

A :class:`Catalog` binds the declarations to one project root (an argument, never the current
directory) and one params file; stages get it as ``run(params, paths)`` and read and write
through it::

    paths = Catalog(root)
    features = paths.read("features_t1", params)      # contract-checked, one-line errors
    paths.write("clv_predictions_t1", frame, params)  # contract-checked, atomic
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from features.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.config import Params

CUTOFF_OFFSETS = (0, 1, 2)  # t_k = as_of - k * horizon: k = 0 scores, 1 trains, 2 backtests


@dataclass(frozen=True)
class Artifact:
    """One file (or directory) a stage writes and others read."""

    key: str
    path: str  # relative to the project root, POSIX separators
    producer: str  # the `cvp` stage that writes it
    readers: tuple[str, ...] = ()  # the DVC stages that read it
    contract: str | None = None  # a schema name in pipelines.contracts (Parquet artifacts)
    out: str | None = None  # the DVC output holding it when that is a directory

    @property
    def dvc_out(self) -> str:
        return self.out or self.path


def _cutoffs(key: str, directory: str, producer: str, readers: dict[int, tuple[str, ...]], contract: str,
             offsets: Sequence[int] = CUTOFF_OFFSETS) -> list[Artifact]:
    """``<key>_t<k>`` at ``<directory>/<file stem>_t<k>.parquet`` for each cutoff offset k."""
    stem = key.removeprefix(f"{producer}_")
    return [
        Artifact(f"{key}_t{k}", f"{directory}/{stem}_t{k}.parquet", producer, readers[k], contract, directory)
        for k in offsets
    ]


_FEATURES_READERS = {0: ("clv", "churn", "value", "segment", "export"), 1: ("clv", "churn", "value", "segment"),
                     2: ("clv", "churn", "value")}
_LABELS_READERS = {1: ("clv", "churn", "value", "segment"), 2: ("clv", "churn", "value")}

#: Stages with a code fingerprint (pipelines.code_fingerprint.STAGES; a test keeps both equal).
_CODE_STAGES = ("ingest", "features", "clv", "churn", "value", "segment", "export", "notebook")

_CLV_MODELS, _CHURN_MODELS, _VALUE_MODELS, _SEGMENT_MODELS = (
    f"models/artifacts/{stage}" for stage in ("clv", "churn", "value", "segment")
)

ARTIFACTS: tuple[Artifact, ...] = (
    # fingerprint: what ingest would read (files, sizes, mtimes, the run date's bound); ingest re-runs when it changes
    Artifact("source_fingerprint", "data/interim/source_fingerprint.json", "fingerprint", ("ingest",)),
    # ... and the code each stage runs (pipelines/code_fingerprint.py); the stage re-runs when it changes
    *(Artifact(f"code_{stage}", f"data/interim/code/{stage}.json", "fingerprint", (stage,)) for stage in _CODE_STAGES),
    # ingest
    Artifact("transactions", "data/interim/transactions.parquet", "ingest", ("features", "clv"), "transactions"),
    Artifact("rejected", "data/quarantine/rejected.parquet", "ingest"),  # columns follow the raw file
    Artifact("metrics_ingest", "metrics/ingest.json", "ingest", ("export",)),
    # features
    *_cutoffs("features", "data/features", "features", _FEATURES_READERS, "features"),
    *_cutoffs("labels", "data/features", "features", _LABELS_READERS, "labels", offsets=(1, 2)),
    Artifact("metrics_features", "metrics/features.json", "features"),
    # clv
    *_cutoffs("clv_predictions", "data/clv", "clv",
              {0: ("churn", "value", "segment", "export"), 1: ("churn", "value", "segment", "export"),
               2: ("churn", "value", "export")},
              "clv_predictions"),
    Artifact("clv_purchase_model", "models/artifacts/clv/purchase_model.pkl", "clv", ("segment",), out=_CLV_MODELS),
    Artifact("clv_spend_model", "models/artifacts/clv/spend_model.pkl", "clv", ("segment",), out=_CLV_MODELS),
    Artifact("clv_model_summary", "models/artifacts/clv/model.json", "clv", out=_CLV_MODELS),
    Artifact("clv_interval_draws", "models/artifacts/clv/interval_draws.json", "clv", ("segment",), out=_CLV_MODELS),
    Artifact("clv_registration", "models/artifacts/clv/registration.json", "clv", ("segment", "export"), out=_CLV_MODELS),
    Artifact("metrics_clv", "metrics/clv.json", "clv", ("export",)),
    Artifact("plots_clv", "plots/clv", "clv", ("export",)),
    # churn
    *_cutoffs("churn_predictions", "data/churn", "churn", {0: ("segment", "export"), 1: ("value", "segment", "export")},
              "churn_predictions", offsets=(0, 1)),
    Artifact("churn_model", "models/artifacts/churn/model.pkl", "churn", ("segment",), out=_CHURN_MODELS),
    Artifact("churn_booster", "models/artifacts/churn/model.txt", "churn", out=_CHURN_MODELS),
    Artifact("churn_features", "models/artifacts/churn/features.json", "churn", out=_CHURN_MODELS),
    Artifact("churn_registration", "models/artifacts/churn/registration.json", "churn", ("segment", "export"),
             out=_CHURN_MODELS),
    Artifact("metrics_churn", "metrics/churn.json", "churn", ("export",)),
    Artifact("plots_churn", "plots/churn", "churn", ("export",)),
    # value
    *_cutoffs("value_predictions", "data/value", "value", {0: ("segment",), 1: ()}, "value_predictions", offsets=(0, 1)),
    Artifact("value_model", "models/artifacts/value/model.pkl", "value", ("segment",), out=_VALUE_MODELS),
    Artifact("metrics_value", "metrics/value.json", "value", ("segment",)),
    Artifact("plots_value", "plots/value", "value"),
    # segment
    Artifact("segments", "data/segments/segments.parquet", "segment", ("export", "notebook"), "segments", "data/segments"),
    Artifact("segment_summary", "data/segments/summary.parquet", "segment", ("export", "notebook"), "segment_summary",
             "data/segments"),
    Artifact("segment_reference", "models/artifacts/segment/reference.json", "segment", out=_SEGMENT_MODELS),
    Artifact("segment_registration", "models/artifacts/segment/registration.json", "segment", out=_SEGMENT_MODELS),
    Artifact("metrics_segment", "metrics/segment.json", "segment", ("export", "notebook")),
    Artifact("plots_segment", "plots/segment", "segment", ("export",)),
    # export
    Artifact("scores_parquet", "exports/scores.parquet", "export", ("notebook",), "scores"),
    Artifact("scores_csv", "exports/scores.csv", "export"),
    Artifact("report_html", "reports/segments.html", "export"),
    Artifact("models_html", "reports/models.html", "export"),
    Artifact("segment_lists", "reports/segments", "export"),
    Artifact("metrics_export", "metrics/export.json", "export", ("notebook",)),
    # notebook
    Artifact("explore_html", "reports/explore.html", "notebook"),
)
_BY_KEY: dict[str, Artifact] = {a.key: a for a in ARTIFACTS}
assert len(_BY_KEY) == len(ARTIFACTS), "artifact keys must be unique"

#: Files outside the DVC graph, also in one place: the SQL table's default database (not a DVC
#: output: DVC would delete it before each run and lose the rows of other as_of dates), and what
#: `cvp retrain` and `cvp backtest` write.
LAYOUT: dict[str, str] = {
    "DEFAULT_DATABASE": "exports/scores.db",
    "CHAMPION_DIR": "models/champion",
    "RETRAIN_REPORT": "metrics/retrain.json",
    "BACKTEST_TABLE": "reports/backtest.csv",
    "BACKTEST_PLOT": "reports/backtest.png",
    "BACKTEST_REPORT": "metrics/backtest.json",
    "NOTEBOOK": "notebooks/explore.ipynb",
    "TRACKING": "tracking",
    # aliases of catalogued paths under the names the stages have always used
    "DATA": "data",
    "TRANSACTIONS": "data/interim/transactions.parquet",
    "QUARANTINE": "data/quarantine/rejected.parquet",
    "FEATURES_DIR": "data/features",
    "CLV_DIR": "data/clv",
    "CHURN_DIR": "data/churn",
    "VALUE_DIR": "data/value",
    "SEGMENTS_DIR": "data/segments",
    "SEGMENTS": "data/segments/segments.parquet",
    "SEGMENT_SUMMARY": "data/segments/summary.parquet",
    "MODELS": "models/artifacts",
    "CLV_MODEL_DIR": "models/artifacts/clv",
    "CHURN_MODEL_DIR": "models/artifacts/churn",
    "VALUE_MODEL_DIR": "models/artifacts/value",
    "SEGMENT_MODEL_DIR": "models/artifacts/segment",
    "SEGMENT_REFERENCE": "models/artifacts/segment/reference.json",
    "METRICS": "metrics",
    "PLOTS": "plots",
    "EXPORTS": "exports",
    "SCORES_PARQUET": "exports/scores.parquet",
    "SCORES_CSV": "exports/scores.csv",
    "REPORTS": "reports",
    "REPORT_HTML": "reports/segments.html",
    "MODELS_HTML": "reports/models.html",
    "SEGMENT_LISTS": "reports/segments",
    "EXPLORE_HTML": "reports/explore.html",
}


def artifact(key: str) -> Artifact:
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"no artifact '{key}' in the catalog (pipelines/catalog.py)") from None


def produced_by(stage: str) -> list[Artifact]:
    return [a for a in ARTIFACTS if a.producer == stage]


def read_by(stage: str) -> list[Artifact]:
    return [a for a in ARTIFACTS if stage in a.readers]


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


class Catalog:
    """The catalog bound to a project root: paths, and contract-checked reads and writes.

    ``root`` is where the project's files live (relative paths stay relative, so messages name
    files as the user sees them); ``params_file`` is the params file of this run (the MLflow
    parent run is keyed on it); ``pipeline_run_id`` pins the MLflow parent run (a backtest
    groups each date's stages under its own run).
    """

    def __init__(self, root: Path | str = ".", params_file: Path | str | None = None,
                 pipeline_run_id: str | None = None) -> None:
        self.root = Path(root)
        self.params_file = Path(params_file) if params_file is not None else self.root / "params.yaml"
        self.pipeline_run_id = pipeline_run_id

    def __repr__(self) -> str:
        return f"Catalog(root={str(self.root)!r}, params_file={str(self.params_file)!r})"

    def under(self, root: Path | str, params_file: Path | str | None = None, pipeline_run_id: str | None = None) -> "Catalog":
        """The same catalog for another project directory (e.g. a backtest's scratch copy)."""
        return Catalog(root, params_file, pipeline_run_id)

    def __getattr__(self, name: str) -> Path:
        """The fixed locations by their upper-case names, e.g. ``paths.TRANSACTIONS``."""
        if name in LAYOUT:
            return self.root / LAYOUT[name]
        raise AttributeError(f"Catalog has no attribute {name!r}")

    # ----------------------------------------------------------------- paths
    def path(self, key: str) -> Path:
        return self.root / artifact(key).path

    def features_at(self, k: int) -> Path:
        """Customer features at cutoff t_k = as_of - k * horizon (k = 0 scores, 1 trains, 2 backtests)."""
        return self.path(f"features_t{k}")

    def labels_at(self, k: int) -> Path:
        """Labels for the window (t_k, t_k + horizon] of the customers in features_at(k); k >= 1."""
        return self.path(f"labels_t{k}")

    def clv_predictions_at(self, k: int) -> Path:
        """CLV-model predictions at t_k from a model fitted on data up to t_k."""
        return self.path(f"clv_predictions_t{k}")

    def churn_predictions_at(self, k: int) -> Path:
        """Churn probabilities at t_k: k=0 from the model trained at t_1 (scores), k=1 out-of-time
        from the evaluation model trained at t_2 (used to evaluate the combined forecast)."""
        return self.path(f"churn_predictions_t{k}")

    def metrics_file(self, stage: str) -> Path:
        return self.root / "metrics" / f"{stage}.json"

    def plots_dir(self, stage: str) -> Path:
        return self.root / "plots" / stage

    @staticmethod
    def registration_file(model_dir: Path) -> Path:
        """JSON {"name", "version", "run_id"} of the MLflow registered model a stage produced."""
        return Path(model_dir) / "registration.json"

    # ----------------------------------------------------------------- frames
    def read(self, key: str, params: Params | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Read a Parquet artifact and check it against its contract (``columns``: only those,
        checked against their part of the contract). Missing or broken: one line naming the file
        and the stage to run."""
        import pandas as pd

        from pipelines import contracts

        art = artifact(key)
        path = self.path(key)
        schema = contracts.schema(art.contract, params) if art.contract else None
        if schema is not None and columns:
            schema = contracts.subset(schema, columns)
        if not path.exists():
            raise DataError(f"{path}: not found; run `cvp {art.producer}` first")
        frame = pd.read_parquet(path, columns=list(columns) if columns else None)
        if schema is None:
            return frame
        return contracts.check(schema, frame, f"{path}", f"re-run `cvp {art.producer}`")

    def write(self, key: str, frame: pd.DataFrame, params: Params | None = None) -> Path:
        """Check a frame against the artifact's contract and write it atomically as Parquet."""
        from pipelines import contracts, files

        art = artifact(key)
        path = self.path(key)
        if art.contract is not None:
            contracts.check(contracts.schema(art.contract, params), frame, f"{path}", "this is a bug in the stage writing it")
        return files.write_parquet(frame, path)

    def read_json(self, key: str) -> Any:
        from pipelines import files

        path = self.path(key)
        if not path.exists():
            raise DataError(f"{path}: not found; run `cvp {artifact(key).producer}` first")
        return files.read_json(path)


_EXPS_MARKER = (".dvc", "tmp", "exps")


def project_root(start: Path | None = None) -> Path:
    """The project directory: the nearest ancestor holding dvc.yaml, outside DVC temp workspaces.

    Standard library only (like tracking_dir), so the fingerprint stage and `python -m
    pipelines.summary` find the project without importing pipelines.tracking's dependencies."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    for i in range(len(parts) - len(_EXPS_MARKER) + 1):
        if parts[i : i + len(_EXPS_MARKER)] == _EXPS_MARKER:
            return Path(*parts[:i])
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").exists():
            return candidate
    return here


def tracking_dir(params: Params, root: Path | str = ".") -> Path:
    """The MLflow store's directory: mlflow.tracking_dir (relative to the project) or <project>/tracking."""
    project = project_root(Path(root))
    configured = params.mlflow.tracking_dir
    if configured:
        path = Path(configured)
        return path if path.is_absolute() else project / path
    return project / LAYOUT["TRACKING"]


def project_catalog(params_file: Path | str = "params.yaml", start: Path | None = None) -> Catalog:
    """The catalog of the project holding ``start`` (default: the current directory), with the
    root relative to the current directory when it contains it, so messages read ``data/...``."""
    import os

    root = project_root(start)
    try:
        root = Path(os.path.relpath(root))
    except ValueError:  # another drive (Windows)
        pass
    return Catalog(root, params_file)
