"""How a duration reads: the one place that spells it (the trainer's progress lines, the
sweep's summary and ETA, the CLI's closing lines).

Whole seconds under a minute, minutes and seconds under an hour, hours and minutes beyond:
as short as a progress line needs, exact at a few seconds and still readable at many hours.

Example:
    >>> duration(7.9), duration(267), duration(179.9999), duration(2 * 86400 + 300)
    ('8s', '4m27s', '3m00s', '48h05m')
    >>> duration(-3), duration(float("inf"))
    ('0s', '-')
"""
from __future__ import annotations

import math


def duration(seconds: float) -> str:
    """``45s``, ``4m27s``, ``2h05m``: rounded to whole seconds (then truncated to minutes beyond an
    hour); a negative time reads ``0s``, one that is not finite ``-``."""
    if not math.isfinite(seconds):
        return "-"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"
