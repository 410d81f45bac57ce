"""How many 2025-11-25 MCP sessions each client may hold, and for how long an unused one lives.

A session (the `initialize` handshake, then `Mcp-Session-Id` on every request) costs the server a task and
its buffers until the client ends it (`DELETE /mcp`) or it expires unused. With only a global cap, one
client that opens sessions in a loop fills the cap and locks every other client out until its sessions
expire. So each session is counted against the client that opened it, its API key (by prefix) or, without
a key, its peer address; a client at :attr:`SessionLimits.per_client` is refused one more (HTTP 429 with
`Retry-After`) while every other client is unaffected. The global cap stays as the last line.

The SDK expires a session `idle_s` after its last request finished; this ledger forgets it no earlier
(from the end of the request as *we* saw it, and never while one is in flight), so it never counts fewer
sessions than the SDK holds. A session the SDK no longer knows (404) or that its client ended is forgotten
at once. The stateless 2026-07-28 era opens no session and is not counted.

Pure bookkeeping, no I/O, no SDK: times come from the caller (`trio.current_time()`).
"""

from __future__ import annotations

import math

import attrs

__all__ = ["SessionLedger", "SessionLedgerStatistics", "SessionLimits"]


@attrs.frozen
class SessionLimits:
    """The session limits of one MCP endpoint."""

    total: int = 1000
    """Open sessions at most, all clients together (the SDK answers 503 beyond)."""
    per_client: int = 16
    """Open sessions at most per client: per API key, else per peer address (429 beyond)."""
    idle_s: float = 600.0
    """A session with no request for this long is closed (the SDK's default is 30 minutes)."""

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.per_client <= self.total:
            raise ValueError(f"per_client must be 1..total ({self.total}), got {self.per_client}")
        if not (math.isfinite(self.idle_s) and self.idle_s > 0):
            raise ValueError(f"idle_s must be a positive number of seconds, got {self.idle_s}")


@attrs.frozen
class SessionLedgerStatistics:
    sessions: int
    """Sessions counted (opened and not yet ended or expired)."""
    opening: int
    """Opening requests in flight (each holds a place in its client's quota)."""
    clients: int
    """Clients holding at least one session or opening one."""
    refused: int
    """Opening requests refused since the start: the client was at its quota."""


@attrs.define
class _Session:
    client: str
    last: float
    """When its last request finished (or began, while one is in flight)."""
    in_flight: int = 0


class SessionLedger:
    """Which client holds which session; decides whether a client may open one more."""

    def __init__(self, limits: SessionLimits) -> None:
        self.limits = limits
        self._sessions: dict[str, _Session] = {}
        self._opening: dict[str, int] = {}
        self._refused = 0

    def statistics(self) -> SessionLedgerStatistics:
        clients = {s.client for s in self._sessions.values()} | set(self._opening)
        opening = sum(self._opening.values())
        return SessionLedgerStatistics(len(self._sessions), opening, len(clients), self._refused)

    def held(self, client: str) -> int:
        """Sessions `client` holds, opening ones included."""
        return self._opening.get(client, 0) + sum(1 for s in self._sessions.values() if s.client == client)

    def owner(self, session_id: str) -> str | None:
        """The client session `session_id` counts against, if it is counted."""
        session = self._sessions.get(session_id)
        return None if session is None else session.client

    def try_open(self, client: str, now: float) -> float | None:
        """Reserve a place for a session `client` is opening (None), or refuse: seconds until one frees.

        A reservation must be settled with :meth:`opened` whatever becomes of the request.
        """
        self._expire(now)
        if self.held(client) >= self.limits.per_client:
            self._refused += 1
            idle = self.limits.idle_s
            waits = [
                s.last + idle - now for s in self._sessions.values() if s.client == client and not s.in_flight
            ]
            return max(1.0, min(waits, default=idle))
        self._opening[client] = self._opening.get(client, 0) + 1
        return None

    def opened(self, client: str, session_id: str | None, now: float) -> None:
        """Settle a reservation: the session `session_id` exists now, or (None) none was opened."""
        left = self._opening.get(client, 0) - 1
        if left > 0:
            self._opening[client] = left
        else:
            self._opening.pop(client, None)
        if session_id is not None:
            self._sessions[session_id] = _Session(client, now)

    def begin(self, session_id: str, now: float) -> None:
        """A request in session `session_id` starts (an id we never counted is ignored)."""
        session = self._sessions.get(session_id)
        if session is not None:
            session.in_flight += 1
            session.last = max(session.last, now)

    def end(self, session_id: str, now: float, *, gone: bool) -> None:
        """That request finished; `gone`: the session no longer exists (ended by its client, or a 404)."""
        session = self._sessions.get(session_id)
        if session is None:
            return
        session.in_flight = max(0, session.in_flight - 1)
        session.last = max(session.last, now)
        if gone:
            del self._sessions[session_id]

    def _expire(self, now: float) -> None:
        idle = self.limits.idle_s
        expired = [sid for sid, s in self._sessions.items() if s.in_flight == 0 and now >= s.last + idle]
        for sid in expired:
            del self._sessions[sid]
