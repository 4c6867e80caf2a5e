"""What the CLV models did, in words for logs and the run's notices.

Kept apart from models/clv.py (which imports scikit-learn and SciPy) so that the run summary
(pipelines/notices.py), which `make run` prints even when nothing changed, imports no model library.
"""

from __future__ import annotations

import math


def fallback_description(k: float | None, mean: float | None) -> str:
    """How a spend fallback values a customer, in words: the credibility weighting x / (x + k) of the
    customer's own mean spend against the population mean ``mean`` (k = inf or None: the mean for
    everyone; k = 0: each customer's own mean)."""
    of_mean = "" if mean is None else f" {mean:.4g}"
    if k is None or not math.isfinite(k):
        return f"the population mean spend{of_mean} for every customer"
    if k == 0:
        return (f"each repeat customer's own mean spend (credibility k = 0: the spread between customers dwarfs "
                f"the spread of their purchases; the population mean spend{of_mean} for the others)")
    return f"each customer's mean spend weighted x / (x + {k:.4g}) against the population mean spend{of_mean}"
