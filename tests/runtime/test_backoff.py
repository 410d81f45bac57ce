import random

import pytest

from marketflow.runtime import Backoff


class MaxRandom(random.Random):
    """Always draws the upper bound, so delays show the jitter ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_delays_are_full_jitter_draws_from_the_seeded_rng() -> None:
    backoff = Backoff(0.5, 30.0, random.Random(1234))
    reference = random.Random(1234)
    expected = [reference.uniform(0, min(30.0, 0.5 * 2**n)) for n in range(12)]

    assert [backoff.next_delay() for _ in range(12)] == expected
    assert backoff.attempt == 12


def test_ceiling_doubles_and_is_capped_at_max() -> None:
    backoff = Backoff(1.0, 10.0, MaxRandom())

    assert [backoff.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_delays_stay_within_the_ceiling() -> None:
    backoff = Backoff(0.25, 3.0, random.Random(7))
    for n in range(40):
        assert 0 <= backoff.next_delay() <= min(3.0, 0.25 * 2**n)


def test_reset_starts_again_from_the_first_delay() -> None:
    backoff = Backoff(1.0, 10.0, MaxRandom())
    for _ in range(3):
        backoff.next_delay()
    assert backoff.attempt == 3

    backoff.reset()

    assert backoff.attempt == 0
    assert backoff.next_delay() == 1.0
    assert backoff.next_delay() == 2.0


def test_many_attempts_do_not_overflow() -> None:
    backoff = Backoff(1.0, 60.0, MaxRandom())
    for _ in range(2000):
        delay = backoff.next_delay()
    assert delay == 60.0


@pytest.mark.parametrize(("initial_s", "max_s"), [(-1.0, 1.0), (2.0, 1.0)])
def test_rejects_inconsistent_bounds(initial_s: float, max_s: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(initial_s, max_s)
