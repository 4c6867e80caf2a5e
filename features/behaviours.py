"""Behaviours of the synthetic world that drive dropout and that recency and frequency cannot see.

Each behaviour is switched on with a strength s > 0 (``cvp generate --behaviours``; 1 = the
documented default) and applies to a share of the customers, drawn from a stream of its own
(so the default world, every strength 0, keeps its rows bit for bit):

- ``slowdown`` (50% of customers): before leaving, the last ``DECLINE_ORDERS`` gaps lengthen, the
  k-th last by a factor 1 + 2 s * (DECLINE_ORDERS - k + 1) / DECLINE_ORDERS (the last gap x (1 + 2 s));
- ``basket`` (50%): before leaving, the last ``DECLINE_ORDERS`` orders shrink, the k-th last
  order's value x exp(-0.25 * s * (DECLINE_ORDERS - k + 1)) (the last x exp(-0.75 s));
- ``returns`` (25%): serial returners: every line is returned with probability
  min(0.6, return_prob + 0.25 s), and they leave more readily: p -> 1 - (1 - p)^(1 + 4 s);
- ``seasonal`` (20%): buyers active in one ``SEASON_DAYS``-day window of each year (its start
  uniform over the year, the window never straddles New Year): the purchase process of each
  calendar year is squeezed into the window, so the long off-season silence is not churn;
- ``growth`` (30%): customers who stay and spend more: p -> p / (1 + 5 s), and order values grow
  by exp(0.4 s * years since their first purchase).

``decline_leaving`` (0 by default) makes the decliners (slowdown or basket customers, where those are
on) leave more readily: p -> 1 - (1 - p)^(1 + decline_leaving), so their declines announce most of
the leaving. The named worlds (features.synthetic.WORLD_PRESETS, ``cvp generate --world``) set
the strength a behaviour has when switched on by name: ``retail`` (every behaviour at 4,
decline_leaving 10, a young base with rare BG/NBD dropout) is calibrated to a reference base where
BG/NBD ranks next-91-day churn at ROC-AUC ~0.73-0.77 (docs/churn.md).

"Leaving" is BG/NBD's dropout: the customer buys for the last time at the repeat purchase after
which they leave (:func:`Traits.shape_orders` marks that order; a customer whose last order was
pushed past the period's end by a slowdown is alive at the end).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

BEHAVIOURS = ("slowdown", "basket", "returns", "seasonal", "growth")
DEFAULT_STRENGTH = 1.0
SHARES = {"slowdown": 0.5, "basket": 0.5, "returns": 0.25, "seasonal": 0.2, "growth": 0.3}
DECLINE_ORDERS = 3  # orders (slowdown: gaps) before leaving that show the decline
SEASON_DAYS = 91  # length of a seasonal buyer's window each year
YEAR_DAYS = 365.0


@dataclass(frozen=True)
class Behaviours:
    """Strength of each behaviour (0 = off; all 0 = the pure BG/NBD + Gamma-Gamma world)."""

    slowdown: float = 0.0
    basket: float = 0.0
    returns: float = 0.0
    seasonal: float = 0.0
    growth: float = 0.0
    # decliners (slowdown or basket customers, where those are on) leave more readily:
    # p -> 1 - (1 - p)^(1 + decline_leaving); 0 (the default) = they leave like everyone else
    decline_leaving: float = 0.0

    def __post_init__(self) -> None:
        if any(getattr(self, name) < 0 for name in (*BEHAVIOURS, "decline_leaving")):
            raise ValueError("behaviour strengths and decline_leaving must be >= 0")

    @property
    def active(self) -> bool:
        return any(getattr(self, name) > 0 for name in BEHAVIOURS)

    def to_dict(self) -> dict[str, float]:
        """The strengths; ``decline_leaving`` only when set (the record of older worlds is unchanged)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in BEHAVIOURS or getattr(self, f.name)}

    def draw(self, rng: np.random.Generator, n: int) -> Traits:
        """Each customer's behaviour flags and season start (every draw is made whatever is on,
        so a behaviour's customers do not depend on which others are switched on)."""
        flags = {name: (rng.random(n) < SHARES[name]) & (getattr(self, name) > 0) for name in BEHAVIOURS}
        season_start = rng.uniform(0.0, YEAR_DAYS - SEASON_DAYS, n)
        return Traits(self, flags, season_start)


def parse_behaviours(text: str | None, defaults: Behaviours | None = None) -> Behaviours:
    """``slowdown,basket=2`` or ``all`` -> Behaviours; a name without ``=`` gets its strength in
    ``defaults`` (a world preset's, features.synthetic.WORLD_PRESETS), else DEFAULT_STRENGTH."""
    if not text or not text.strip():
        return Behaviours()
    strengths: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, _, value = item.partition("=")
        name = name.strip().lower()
        names = BEHAVIOURS if name == "all" else (name,)
        if name != "all" and name not in BEHAVIOURS:
            raise ValueError(f"--behaviours: unknown behaviour '{name}'; use {', '.join(BEHAVIOURS)} or all")
        if not value.strip():
            strengths |= {n: DEFAULT_STRENGTH if defaults is None else getattr(defaults, n) for n in names}
            continue
        try:
            strength = float(value)
        except ValueError:
            raise ValueError(f"--behaviours: strength '{value}' of '{name}' is not a number; write name=1.5") from None
        if not strength >= 0 or not np.isfinite(strength):
            raise ValueError(f"--behaviours: strength of '{name}' must be a finite number >= 0, not {value}")
        strengths |= dict.fromkeys(names, strength)
    return Behaviours(**strengths, decline_leaving=0.0 if defaults is None else defaults.decline_leaving)


def _group_starts(owner: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(owner, minlength=n)
    return counts, np.cumsum(counts) - counts


@dataclass
class Traits:
    """The behaviours of one block of customers, applied step by step by the simulation."""

    strength: Behaviours
    flags: dict[str, np.ndarray]
    season_start: np.ndarray  # day of the year a seasonal buyer's window opens

    def adjust_dropout(self, p: np.ndarray) -> np.ndarray:
        """Dropout probability per repeat purchase: higher for serial returners, lower for growers."""
        p = p.copy()
        if self.strength.decline_leaving:
            decliners = self.flags["slowdown"] | self.flags["basket"]
            p[decliners] = 1.0 - (1.0 - p[decliners]) ** (1.0 + self.strength.decline_leaving)
        returners, growers = self.flags["returns"], self.flags["growth"]
        p[returners] = 1.0 - (1.0 - p[returners]) ** (1.0 + 4.0 * self.strength.returns)
        p[growers] = p[growers] / (1.0 + 5.0 * self.strength.growth)
        return p

    def shape_orders(self, owner: np.ndarray, op_time: np.ndarray, seq: np.ndarray, latent: dict, total: float):
        """Slow down and shrink the orders before leaving, grow the growers' orders; drop orders a
        slowdown pushed past the end. Returns (owner, op_time, seq, value_scale) and puts per-order
        marks in ``latent['marks']`` (the leaving order, the first order of each decline)."""
        n = self.season_start.size
        counts, starts = _group_starts(owner, n)
        from_end = counts[owner] - 1 - seq  # 0 = the customer's last order
        leaving = latent["left"][owner]
        steps = np.clip(DECLINE_ORDERS - from_end, 0, None)  # 1..DECLINE_ORDERS on the declining orders
        birth = op_time[starts][owner]

        slow = leaving & self.flags["slowdown"][owner] & (seq > 0)
        gaps = np.diff(op_time, prepend=0.0)
        gaps[seq == 0] = 0.0
        gaps = gaps * np.where(slow, 1.0 + 2.0 * self.strength.slowdown * steps / DECLINE_ORDERS, 1.0)
        cum = np.cumsum(gaps)
        slowed = np.repeat(np.add.reduceat(slow, starts) > 0, counts) if owner.size else slow
        new_time = np.where(slowed, birth + cum - cum[starts][owner], op_time)

        scale = np.ones(owner.size)
        shrink = leaving & self.flags["basket"][owner]
        scale[shrink] *= np.exp(-0.25 * self.strength.basket * steps[shrink])
        grow = self.flags["growth"][owner]
        scale[grow] *= np.exp(0.4 * self.strength.growth * (new_time[grow] - birth[grow]) / YEAR_DAYS)

        first_decline = from_end == np.minimum(DECLINE_ORDERS, counts[owner] - 1)
        latent["marks"] = {
            "dropout": leaving & (from_end == 0),
            "slowdown_from": first_decline & leaving & self.flags["slowdown"][owner],
            "basket_from": (from_end == np.minimum(DECLINE_ORDERS - 1, counts[owner] - 1)) & shrink,
        }
        keep = new_time < total
        latent["marks"] = {k: v[keep] for k, v in latent["marks"].items()}
        return owner[keep], new_time[keep], seq[keep], scale[keep]

    def seasonal_days(self, owner: np.ndarray, day: np.ndarray, period_days: int) -> np.ndarray:
        """Calendar days (since the start) of the seasonal buyers' orders squeezed into their window:
        day y*365 + f*365 -> y*365 + start + f*SEASON_DAYS (order preserved)."""
        seasonal = self.flags["seasonal"][owner]
        if not seasonal.any():
            return day
        day = day.copy()
        year = np.floor(day[seasonal] / YEAR_DAYS)
        within = (day[seasonal] - year * YEAR_DAYS) / YEAR_DAYS
        moved = year * YEAR_DAYS + self.season_start[owner[seasonal]] + within * SEASON_DAYS
        day[seasonal] = np.minimum(moved, period_days - 1.0 / 86400)
        return day

    def return_prob(self, line_owner: np.ndarray, base: float) -> np.ndarray:
        """Per-line return probability: serial returners return far more."""
        high = min(0.6, base + 0.25 * self.strength.returns)
        return np.where(self.flags["returns"][line_owner], high, base)
