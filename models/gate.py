"""Champion/challenger gate: promote a retrained model only if it is not worse on the same holdout.

Each metric has a direction (higher or lower is better) and a tolerance: how much worse than
the champion the challenger may be and still pass. A tolerance is absolute (in the metric's
units) or relative (a share of the champion's value, for scale-dependent errors such as a
money MAE). A challenger passes when every metric passes:

    higher is better:  challenger >= champion - allowance
    lower is better:   challenger <= champion + allowance
    allowance = tolerance (absolute) or tolerance * |champion| (relative)

A band rule has a target instead of a direction: the challenger passes when it lies within the
tolerance of the target, whatever the champion's value (e.g. an interval's holdout coverage, which
should equal its nominal level, not merely beat the champion's).

Without a champion (first run) the challenger is promoted unconditionally; a forced promotion
is promoted whatever the verdicts, and says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

PROMOTE = "promote"
REFUSE = "refuse"


@dataclass(frozen=True)
class MetricRule:
    """How one metric is compared; ``name`` is its key in both metric mappings."""

    name: str
    higher_is_better: bool
    tolerance: float
    relative: bool  # tolerance as a share of |champion| (True) or in the metric's units
    target: float | None  # a band rule: the challenger must lie within tolerance of this, champion or not

    def __post_init__(self) -> None:
        if self.tolerance < 0:
            raise ValueError(f"tolerance of {self.name} must be >= 0")

    def limit(self, champion: float) -> float:
        """The worst challenger value that still passes against ``champion``."""
        allowance = self.tolerance * abs(champion) if self.relative else self.tolerance
        return champion - allowance if self.higher_is_better else champion + allowance


@dataclass(frozen=True)
class MetricVerdict:
    """One metric's comparison; ``limit`` is None when it could not be compared."""

    metric: str
    challenger: float | None
    champion: float | None
    limit: float | None
    passed: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {
            "challenger": self.challenger,
            "champion": self.champion,
            "limit": self.limit,
            "passed": self.passed,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class GateDecision:
    """The decision, whether it was forced, and why (one reason per metric, or the override)."""

    decision: Literal["promote", "refuse"]
    forced: bool
    reasons: tuple[str, ...]
    verdicts: tuple[MetricVerdict, ...]

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTE

    def to_dict(self) -> dict[str, object]:
        return {
            "decision": self.decision,
            "forced": self.forced,
            "reasons": list(self.reasons),
            "metrics": {v.metric: v.to_dict() for v in self.verdicts},
        }


def _number(value: object) -> float | None:
    """A finite float, or None for a missing / null / NaN / non-numeric value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(float(value)) else None


def compare(rule: MetricRule, challenger: object, champion: object) -> MetricVerdict:
    """Verdict of one metric. A missing challenger or champion value fails: it proves nothing. A band
    rule (``rule.target``) checks the challenger alone: |challenger - target| <= tolerance."""
    chal, champ = _number(challenger), _number(champion)
    if chal is None:
        return MetricVerdict(rule.name, chal, champ, None, False, f"{rule.name}: challenger has no value")
    if rule.target is not None:
        passed = abs(chal - rule.target) <= rule.tolerance
        verb = "within" if passed else "outside"
        reason = f"{rule.name}: challenger {chal:.4g} {verb} {rule.target:.4g} +- {rule.tolerance:.4g}"
        return MetricVerdict(rule.name, chal, champ, rule.tolerance, passed, reason)
    if champ is None:
        return MetricVerdict(rule.name, chal, champ, None, False, f"{rule.name}: champion has no value")
    limit = rule.limit(champ)
    passed = chal >= limit if rule.higher_is_better else chal <= limit
    better = "higher" if rule.higher_is_better else "lower"
    verb = "within tolerance of" if passed else "worse than"
    reason = (
        f"{rule.name}: challenger {chal:.4g} {verb} champion {champ:.4g} "
        f"({better} is better, limit {limit:.4g})"
    )
    return MetricVerdict(rule.name, chal, champ, limit, passed, reason)


def decide(
    challenger: Mapping[str, object],
    champion: Mapping[str, object] | None,
    rules: Sequence[MetricRule],
    force: bool = False,
) -> GateDecision:
    """Promote or refuse the challenger against the champion under ``rules``.

    ``champion`` None = no champion yet: promote. ``force`` promotes whatever the verdicts,
    which are still computed (when there is a champion) and recorded with the override.
    """
    if not rules:
        raise ValueError("the gate needs at least one metric rule")
    if champion is None:
        verdicts = tuple(
            MetricVerdict(r.name, _number(challenger.get(r.name)), None, None, True, f"{r.name}: no champion")
            for r in rules
        )
        return GateDecision(PROMOTE, force, ("first model: no champion to compare with",), verdicts)
    verdicts = tuple(compare(r, challenger.get(r.name), champion.get(r.name)) for r in rules)
    reasons = tuple(v.reason for v in verdicts)
    if force:
        return GateDecision(PROMOTE, True, ("forced by --force-promote", *reasons), verdicts)
    decision = PROMOTE if all(v.passed for v in verdicts) else REFUSE
    return GateDecision(decision, False, reasons, verdicts)
