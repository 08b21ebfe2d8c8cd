"""
`RetryPolicy`: how long to wait before the next attempt, and when to give up.

Pure arithmetic, no I/O: the relay passes the attempt number and gets back a
delay with exponential growth, a ceiling and jitter (so rows that failed
together do not all come back in the same instant).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """
    Exponential backoff with jitter and an attempt budget.

    The delay after attempt *n* (1-based) is
    ``min(max_seconds, base_seconds * multiplier ** (n - 1))`` scaled by a
    random factor in ``[1 - jitter, 1 + jitter]`` (capped again at
    ``max_seconds``). After ``max_attempts`` failed attempts the message is
    dead.

    .. versionadded:: 0.1.0
    """

    max_attempts: int = 10
    base_seconds: float = 1.0
    multiplier: float = 2.0
    max_seconds: float = 300.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            msg = f"max_attempts must be at least 1, got {self.max_attempts!r}"
            raise ValueError(msg)
        for name in ("base_seconds", "max_seconds"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                msg = f"{name} must be a finite, non-negative number, got {value!r}"
                raise ValueError(msg)
        if not math.isfinite(self.multiplier) or self.multiplier < 1:
            msg = f"multiplier must be at least 1, got {self.multiplier!r}"
            raise ValueError(msg)
        if not 0 <= self.jitter <= 1:
            msg = f"jitter must be between 0 and 1, got {self.jitter!r}"
            raise ValueError(msg)

    def exhausted(self, attempts: int) -> bool:
        """True once *attempts* failed attempts use up the budget."""
        return attempts >= self.max_attempts

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number *attempt* (1-based)."""
        if attempt < 1:
            msg = f"attempt numbers start at 1, got {attempt!r}"
            raise ValueError(msg)
        # Cap the exponent so huge attempt counts never overflow a float.
        exponent = min(attempt - 1, 64)
        raw = min(self.max_seconds, self.base_seconds * self.multiplier**exponent)
        if self.jitter:
            draw = (rng or random).random()  # jitter, not security
            raw *= 1 - self.jitter + 2 * self.jitter * draw
        return min(self.max_seconds, raw)
