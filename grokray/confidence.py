"""How sure a comparison is: the confidence contributions every verdict rule uses.

Two kinds of comparison decide a label: a *rate* measured on ``n`` queries against a threshold
(accuracy, interchange success, lens bridge rate), and a *margin* on a scale with no sample size
(train accuracy near its ceiling, a ratio of steps in decades). Both return a number in
[0.5, 1]: 0.5 at the threshold or when the value is unknown, towards 1 far from it. A ranking
score, not a calibrated probability.

Example:
    >>> round(margin_confidence(0.6, 0.5, 0.1), 3), round(rate_confidence(0.6, 0.5, 20, 0.1), 3)
    (0.881, 0.814)
"""
from __future__ import annotations

import math


def margin_confidence(value: float | None, threshold: float, scale: float) -> float:
    """``0.5 + 0.5 * tanh(|value - threshold| / scale)``: 0.5 at the threshold (or when the
    value is unknown), towards 1 far from it. Monotone in the margin.

    >>> round(margin_confidence(0.6, 0.5, 0.1), 3), margin_confidence(None, 0.5, 0.1)
    (0.881, 0.5)
    """
    if value is None:
        return 0.5
    return 0.5 + 0.5 * math.tanh(abs(value - threshold) / scale)


def rate_confidence(value: float | None, threshold: float, n: int | None, scale: float) -> float:
    """How sure a rate measured on ``n`` queries is to lie on its side of ``threshold``:
    ``Phi(|value - threshold| / se)``, ``se = sqrt(t (1 - t) / n)`` (``t`` the threshold, kept
    inside [0.01, 0.99]). Without ``n``: :func:`margin_confidence` with ``scale``.

    >>> round(rate_confidence(0.6, 0.5, 300, 0.1), 3), round(rate_confidence(0.6, 0.5, 20, 0.1), 3)
    (1.0, 0.814)
    """
    if value is None:
        return 0.5
    if not n:
        return margin_confidence(value, threshold, scale)
    t = min(max(threshold, 0.01), 0.99)
    z = abs(value - threshold) / math.sqrt(t * (1 - t) / n)
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))
