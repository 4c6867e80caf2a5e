"""The notices of a run: the lines shown at the top of the report and in `make run`'s summary.

Built from the stages' metrics (rows rejected by ingest, which churn probability was exported,
a Gamma-Gamma fallback). Light on purpose (standard library and the catalog): the summary
printed at the end of every `make run` imports this, not the report's pandas and matplotlib.
pipelines/report_common.py re-exports every name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.clv_notes import fallback_description
from pipelines.catalog import artifact


def dig(mapping: Mapping[str, Any] | None, *keys: str, default: Any = None) -> Any:
    """``mapping[k1][k2]...`` or ``default`` when any level is missing."""
    current: Any = mapping
    for key in keys:
        if not isinstance(current, Mapping) or key not in current:
            return default
        current = current[key]
    return current


TOP_REJECTION_REASONS = 3  # reasons named in the rejected-share notice


@dataclass(frozen=True)
class Notice:
    """A line shown at the top of the report and in the run summary (``make run``)."""

    key: str  # stable id: rejected-share | churn-source
    level: str  # warning | note
    text: str


def rejected_share(ingest: Mapping[str, Any]) -> float | None:
    """Share of input rows ingest rejected: ``rejected_share``, else rows_rejected / rows_in
    (rows_in = accepted + rejected when absent); None when the counts are missing."""
    share = ingest.get("rejected_share")
    if isinstance(share, (int, float)) and not isinstance(share, bool):
        return float(share)
    rejected, accepted = ingest.get("rows_rejected"), ingest.get("rows_accepted")
    rows_in = ingest.get("rows_in")
    if not isinstance(rows_in, int) and isinstance(rejected, int) and isinstance(accepted, int):
        rows_in = accepted + rejected
    if not isinstance(rejected, int) or not isinstance(rows_in, int) or rows_in <= 0:
        return None
    return rejected / rows_in


def rejected_share_notice(ingest: Mapping[str, Any] | None) -> Notice | None:
    """A warning whenever ingest rejected any row: how many, the share and the top reasons."""
    share = rejected_share(ingest or {})
    if share is None or share <= 0:
        return None
    rejected, rows_in = ingest.get("rows_rejected"), ingest.get("rows_in")
    if not isinstance(rows_in, int):
        rows_in = ingest.get("rows_accepted", 0) + rejected
    reasons = ingest.get("rejected_by_reason")
    top = []
    if isinstance(reasons, Mapping):
        found = sorted(((n, r) for r, n in reasons.items() if isinstance(n, int) and n > 0), key=lambda x: (-x[0], x[1]))
        top = [f"{reason} {n:,}" for n, reason in found[:TOP_REJECTION_REASONS]]
    counts = f"{rejected:,} of {rows_in:,} input rows" if isinstance(rejected, int) else "input rows"
    why = f"; top reasons: {', '.join(top)}" if top else ""
    return Notice(
        "rejected-share", "warning",
        f"ingest rejected {counts} ({100 * share:.3g}%{why}); they are left out of every score and kept in "
        f"{artifact('rejected').path}",
    )  # fmt: skip


def churn_source_notice(churn: Mapping[str, Any] | None) -> Notice | None:
    """Which churn probability was exported (metrics/churn.json ``churn_source``): a note for the
    classifier, a warning for a CLV baseline; None for metrics written before the guard existed."""
    source = dig(churn, "churn_source")
    if not isinstance(source, str):
        return None
    reason = dig(churn, "churn_source_reason", default="")
    if source == "classifier":
        return Notice("churn-source", "note", f"churn_probability from the classifier: {reason}")
    return Notice(
        "churn-source", "warning",
        f"churn_probability from {source} (calibrated on the training labels), not from the classifier: {reason}",
    )  # fmt: skip


def spend_source_notice(clv: Mapping[str, Any] | None) -> Notice | None:
    """A warning when the Gamma-Gamma fit fell back (metrics/clv.json ``gamma_gamma.source``)."""
    source = dig(clv, "gamma_gamma", "source")
    if not (isinstance(source, str) and source.startswith("fallback")):
        return None
    failure = dig(clv, "gamma_gamma", "fit_failure", default="")
    spend = dig(clv, "gamma_gamma", "population_mean_spend")
    k = dig(clv, "gamma_gamma", "credibility_k")
    how = fallback_description(k if source == "fallback:credibility" and isinstance(k, (int, float)) else None,
                               spend if isinstance(spend, (int, float)) else None)  # fmt: skip
    return Notice("spend-source", "warning",
                  f"expected spend per purchase from {source}: {how}, because Gamma-Gamma could not be fitted: {failure}")


def run_notices(metrics: Mapping[str, Mapping[str, Any]]) -> list[Notice]:
    """The notices of a run from the stages' metrics (by stage name), in display order."""
    found = (rejected_share_notice(metrics.get("ingest")), churn_source_notice(metrics.get("churn")),
             spend_source_notice(metrics.get("clv")))
    return [notice for notice in found if notice is not None]
