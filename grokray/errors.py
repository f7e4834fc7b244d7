"""How an error reads in one line: the one place that spells it.

Every user-facing failure in grokray is one line (a ``ConfigError``, a ``UserError``, a warning);
when it wraps an exception from elsewhere (MLflow, Ray, the OS), this is how that exception is
told: its message's first line, else its type's name (an exception with no message still says
what it was); for an OS error, its own words first (``strerror``: "Permission denied", without the
``[Errno 13]`` and the path the caller already names).

Example:
    >>> first_line(ValueError("bad value\\nTraceback ..."))
    'bad value'
    >>> first_line(KeyError()), first_line(OSError("x" * 50), limit=10)
    ('KeyError', 'xxxxxxxxxx')
    >>> reason(PermissionError(13, "Permission denied", "/x")), reason(RuntimeError())
    ('Permission denied', 'RuntimeError')
"""
from __future__ import annotations


def first_line(error: BaseException, limit: int | None = None) -> str:
    """``error``'s first line of message (stripped), else its type's name; cut to ``limit`` characters."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text[:limit] if limit else text


def reason(error: BaseException, limit: int | None = None) -> str:
    """An OS error's ``strerror``, else :func:`first_line`; cut to ``limit`` characters."""
    text = getattr(error, "strerror", None) or first_line(error)
    return text[:limit] if limit else text
