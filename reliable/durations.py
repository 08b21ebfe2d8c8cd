"""
Durations as operators type them on the command line: ``90``, ``30s``, ``15m``,
``12h``, ``7d``, ``2w`` (seconds when no unit). One parser for the outbox,
inbox and DLQ commands; topology files have their own millisecond-exact type
in `reliable.topology_rules`.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str) -> float:
    """
    ``"90"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"7d"``, ``"1w"`` → seconds.

    Raises:
        ValueError: Not a duration.
    """
    match = _DURATION.match(value)
    if not match:
        msg = (
            f"invalid duration {value!r}; use a number with s, m, h, d or w, e.g. '30m'"
        )
        raise ValueError(msg)
    return float(match[1]) * _UNIT_SECONDS[match[2]]
