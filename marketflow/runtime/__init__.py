"""Generic runtime: actors, supervision, backoff, circuit breaking and batch fan-out.

Knows nothing about markets; imports nothing else from marketflow.
"""

from .actor import Actor, GracefulStop
from .backoff import Backoff
from .bus import Bus, BusStatistics, Overflow, SubscriberStatistics, Subscription, receive_batches
from .circuit import CircuitBreaker, CircuitState, CircuitStatistics
from .supervisor import (
    ChildSpec,
    ChildStatistics,
    Restart,
    Strategy,
    Supervisor,
    SupervisorEscalation,
    SupervisorPolicy,
    SupervisorStatistics,
)

__all__ = [
    "Actor",
    "Backoff",
    "Bus",
    "BusStatistics",
    "ChildSpec",
    "ChildStatistics",
    "CircuitBreaker",
    "CircuitState",
    "CircuitStatistics",
    "GracefulStop",
    "Overflow",
    "Restart",
    "Strategy",
    "SubscriberStatistics",
    "Subscription",
    "Supervisor",
    "SupervisorEscalation",
    "SupervisorPolicy",
    "SupervisorStatistics",
    "receive_batches",
]
