"""Exponential backoff with full jitter.

The n-th delay (counting from 0) is drawn uniformly from ``[0, min(max_s, initial_s * 2**n)]``
("full jitter"), which spreads restarts of many failing children over time instead of having
them retry in lock-step.
"""

from __future__ import annotations

import math
import random

__all__ = ["Backoff"]


class Backoff:
    """Delays between retries: exponential growth capped at ``max_s``, with full jitter.

    Pass a seeded ``random.Random`` to make the sequence reproducible.
    """

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        if initial_s < 0:
            raise ValueError(f"backoff initial_s must be >= 0, got {initial_s}")
        if max_s < initial_s:
            raise ValueError(f"backoff max_s ({max_s}) must be >= initial_s ({initial_s})")
        self._initial_s = initial_s
        self._max_s = max_s
        # A private generator by default, so backoff never perturbs the global random state.
        self._rng = rng if rng is not None else random.Random()
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """Number of delays handed out since creation or the last :meth:`reset`."""
        return self._attempt

    @property
    def initial_s(self) -> float:
        """The upper bound of the first delay."""
        return self._initial_s

    @property
    def max_s(self) -> float:
        """The cap on the upper bound of every delay."""
        return self._max_s

    def next_delay(self) -> float:
        """Return the next delay in seconds and advance the attempt counter."""
        try:
            grown = self._initial_s * 2**self._attempt
        except OverflowError:
            grown = math.inf
        self._attempt += 1
        return self._rng.uniform(0, min(self._max_s, grown))

    def reset(self) -> None:
        """Start again from the first (shortest) delay, e.g. after a successful start."""
        self._attempt = 0
