from __future__ import annotations

import random

import pytest

from reliable.cli.params import parse_duration
from reliable.retry import RetryPolicy


def test_delay_grows_exponentially_up_to_the_ceiling_without_jitter() -> None:
    policy = RetryPolicy(base_seconds=1, multiplier=2, max_seconds=10, jitter=0)
    assert [policy.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_jitter_stays_within_its_band_and_under_the_ceiling() -> None:
    policy = RetryPolicy(base_seconds=4, max_seconds=100, jitter=0.25)
    rng = random.Random(7)
    delays = [policy.delay(1, rng) for _ in range(500)]
    assert min(delays) >= 3.0
    assert max(delays) <= 5.0
    assert len(set(delays)) > 100  # actually random, not a constant
    assert all(
        RetryPolicy(max_seconds=5, jitter=1).delay(50, rng) <= 5 for _ in range(50)
    )


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert RetryPolicy(multiplier=10, max_seconds=60, jitter=0).delay(10_000) == 60


def test_budget_is_exhausted_after_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.exhausted(n) for n in (1, 2, 3, 4)] == [False, False, True, True]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"base_seconds": -1},
        {"max_seconds": float("inf")},
        {"multiplier": 0.5},
        {"jitter": 1.5},
    ],
)
def test_invalid_policies_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        RetryPolicy().delay(0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("30s", 30),
        ("15m", 900),
        ("12h", 43200),
        ("7d", 604800),
        ("1.5h", 5400),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration_is_a_usage_error() -> None:
    import click

    with pytest.raises(click.BadParameter, match="7 days"):
        parse_duration("7 days")
