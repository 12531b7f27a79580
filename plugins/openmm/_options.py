"""Parsing of user options that may arrive as strings (openmm-ml keyword arguments, XML, CLI).

``bool("false")`` is ``True`` in Python, so options such as ``useCUDAGraphs="false"`` must be
parsed, not cast. Errors name the option, the value and the accepted spellings.
"""

from __future__ import annotations

from typing import Any, Optional

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def parse_bool(name: str, value: Any) -> bool:
    """``True``/``False``, 0/1, or one of true/false, yes/no, on/off, 1/0 (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _TRUE:
            return True
        if key in _FALSE:
            return False
    raise ValueError(f"{name} must be a boolean: True/False or one of "
                     f"{'/'.join(_TRUE)} / {'/'.join(_FALSE)} (any case), got {value!r}")


def parse_optional_bool(name: str, value: Any) -> Optional[bool]:
    """Like :func:`parse_bool`, but ``None`` stays ``None`` (option not given)."""
    return None if value is None else parse_bool(name, value)


def parse_nonnegative_int(name: str, value: Any) -> int:
    """An integer ≥ 0 given as int or as its decimal string (``"10"``)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    try:
        number = int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}") from None
    if isinstance(value, float) and value != number:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if number < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return number


def parse_float(name: str, value: Any) -> float:
    """A number given as int/float or as its decimal string (``"-1"``)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
