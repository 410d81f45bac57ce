import pytest

from marketflow.runtime import CircuitBreaker, CircuitState, CircuitStatistics


def test_opens_after_n_failures_within_the_window() -> None:
    breaker = CircuitBreaker(failures=3, window_s=10.0, open_s=5.0)

    breaker.record_failure(0.0)
    breaker.record_failure(1.0)
    assert breaker.state(1.0) is CircuitState.CLOSED
    assert breaker.reopens_at() is None

    breaker.record_failure(2.0)

    assert breaker.state(2.0) is CircuitState.OPEN
    assert breaker.reopens_at() == 7.0


def test_failures_outside_the_window_do_not_count() -> None:
    breaker = CircuitBreaker(failures=3, window_s=10.0, open_s=5.0)

    breaker.record_failure(0.0)
    breaker.record_failure(5.0)
    # The failure at 0.0 is exactly window_s old at 10.0: it has left the window.
    breaker.record_failure(10.0)
    assert breaker.state(10.0) is CircuitState.CLOSED
    assert breaker.statistics(10.0).recent_failures == 2

    breaker.record_failure(11.0)
    assert breaker.state(11.0) is CircuitState.OPEN


def test_open_becomes_half_open_exactly_at_opened_at_plus_open_s() -> None:
    breaker = CircuitBreaker(failures=1, window_s=10.0, open_s=5.0)
    breaker.record_failure(3.0)

    assert breaker.state(7.999999) is CircuitState.OPEN
    assert breaker.state(8.0) is CircuitState.HALF_OPEN
    assert breaker.state(100.0) is CircuitState.HALF_OPEN


def test_success_in_half_open_closes_and_forgets_failures() -> None:
    breaker = CircuitBreaker(failures=2, window_s=100.0, open_s=5.0)
    breaker.record_failure(0.0)
    breaker.record_failure(1.0)
    assert breaker.state(1.0) is CircuitState.OPEN

    breaker.record_success(6.0)

    assert breaker.state(6.0) is CircuitState.CLOSED
    assert breaker.reopens_at() is None
    # The two earlier failures are still inside the window, but were forgotten on closing.
    breaker.record_failure(7.0)
    assert breaker.state(7.0) is CircuitState.CLOSED
    breaker.record_failure(8.0)
    assert breaker.state(8.0) is CircuitState.OPEN


def test_success_while_open_does_not_close() -> None:
    breaker = CircuitBreaker(failures=1, window_s=10.0, open_s=5.0)
    breaker.record_failure(0.0)

    breaker.record_success(4.0)

    assert breaker.state(4.0) is CircuitState.OPEN


def test_failure_in_half_open_opens_again_for_open_s() -> None:
    breaker = CircuitBreaker(failures=3, window_s=10.0, open_s=5.0)
    for t in (0.0, 1.0, 2.0):
        breaker.record_failure(t)
    assert breaker.state(7.0) is CircuitState.HALF_OPEN

    # One failure is enough in half-open, although the window holds fewer than three by now.
    breaker.record_failure(20.0)

    assert breaker.state(20.0) is CircuitState.OPEN
    assert breaker.reopens_at() == 25.0
    assert breaker.state(25.0) is CircuitState.HALF_OPEN


def test_statistics_snapshot() -> None:
    breaker = CircuitBreaker(failures=2, window_s=10.0, open_s=5.0)
    breaker.record_failure(0.0)
    assert breaker.statistics(1.0) == CircuitStatistics(
        state=CircuitState.CLOSED, recent_failures=1, times_opened=0
    )
    breaker.record_failure(1.0)
    breaker.record_failure(6.0)  # failed trial in half-open

    assert breaker.statistics(6.0) == CircuitStatistics(
        state=CircuitState.OPEN, recent_failures=3, times_opened=2
    )
    assert breaker.statistics(20.0) == CircuitStatistics(
        state=CircuitState.HALF_OPEN, recent_failures=0, times_opened=2
    )


@pytest.mark.parametrize(("failures", "window_s", "open_s"), [(0, 1.0, 1.0), (1, 0.0, 1.0), (1, 1.0, -1.0)])
def test_rejects_invalid_parameters(failures: int, window_s: float, open_s: float) -> None:
    with pytest.raises(ValueError, match="circuit"):
        CircuitBreaker(failures, window_s, open_s)
