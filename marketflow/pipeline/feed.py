"""The feed actor: one exchange connection, kept subscribed, publishing raw frames in batches.

A feed instance lives for one connection. When the connection fails (closed, broken, stale, no ack) it
raises `FeedError` and its supervisor starts a fresh one after a backoff with full jitter — that is the
reconnect loop, and it resubscribes every time. Counters live in a `FeedCounters` the daemon keeps across
instances, so statistics survive reconnects.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any

import attrs
import trio

from marketflow.exchanges.base import Ack, Pong, Session, UnknownControl
from marketflow.exchanges.ws import FeedError, WsConnection, connect_ws
from marketflow.model import RawFrames, now_us
from marketflow.runtime.bus import Bus

log = logging.getLogger("marketflow.feed")

CONNECT_TIMEOUT_S = 10.0
ACK_TIMEOUT_S = 10.0


@attrs.define
class FeedCounters:
    """Counters that outlive one connection; `statistics()` snapshots them."""

    connects: int = 0
    disconnects: int = 0
    messages: int = 0
    data_frames: int = 0
    bytes: int = 0
    pongs: int = 0
    unknown_control: int = 0
    state: str = "idle"
    connected_at: int | None = None
    last_message_at: int | None = None
    last_error: str | None = None
    subscribed: list[str] = attrs.Factory(list)
    rejected: dict[str, str] = attrs.Factory(dict)


@attrs.frozen
class FeedStatistics:
    name: str
    exchange: str
    market: str
    url: str
    state: str
    connects: int
    disconnects: int
    messages: int
    data_frames: int
    bytes: int
    pongs: int
    unknown_control: int
    connected_at: int | None
    last_message_at: int | None
    last_error: str | None
    subscribed_topics: tuple[str, ...]
    rejected_topics: dict[str, str]


class Feed:
    """Connects, subscribes, checks every ack, pings, and publishes data frames as `RawFrames` batches."""

    def __init__(
        self,
        *,
        name: str,
        exchange: str,
        market: str,
        url: str,
        session_factory: Callable[[], Session],
        bus: Bus[RawFrames],
        counters: FeedCounters,
        stale_timeout_s: float,
        ping_interval_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self.exchange = exchange
        self.market = market
        self.url = url
        self._session_factory = session_factory
        self._bus = bus
        self._counters = counters
        self._stale_timeout_s = stale_timeout_s
        self._ping_interval_s = ping_interval_s
        self._ssl_context = ssl_context
        self._scope = trio.CancelScope()

    def request_stop(self) -> None:
        """Stopping a feed needs no draining: close the connection now (what was read is published)."""
        self._scope.cancel()

    def statistics(self) -> FeedStatistics:
        c = self._counters
        return FeedStatistics(
            name=self.name,
            exchange=self.exchange,
            market=self.market,
            url=self.url,
            state=c.state,
            connects=c.connects,
            disconnects=c.disconnects,
            messages=c.messages,
            data_frames=c.data_frames,
            bytes=c.bytes,
            pongs=c.pongs,
            unknown_control=c.unknown_control,
            connected_at=c.connected_at,
            last_message_at=c.last_message_at,
            last_error=c.last_error,
            subscribed_topics=tuple(c.subscribed),
            rejected_topics=dict(c.rejected),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self._scope:
            await self._run(task_status)

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        counters = self._counters
        counters.state = "connecting"
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                conn = await connect_ws(self.url, ssl_context=self._ssl_context)
        except trio.TooSlowError as exc:
            counters.state = "down"
            counters.last_error = f"connect timed out after {CONNECT_TIMEOUT_S} s"
            raise FeedError(f"{self.url}: {counters.last_error}") from exc
        except FeedError as exc:
            counters.state = "down"
            counters.last_error = str(exc)
            raise
        counters.connects += 1
        counters.connected_at = now_us()
        log.info("feed connected", extra={"feed": self.name, "url": self.url})
        try:
            async with conn, trio.open_nursery() as nursery:
                session = self._session_factory()
                await self._subscribe(conn, session, task_status)
                nursery.start_soon(self._heartbeat, conn, session)
                await self._pump(conn, session)
        except ExceptionGroup as group:
            # The pump's read failure and the heartbeat's send failure can arrive together: report one
            # FeedError (the group stays attached as its cause); anything else propagates untouched.
            feed_errors, rest = group.split(FeedError)
            if feed_errors is None or rest is not None:
                raise
            first: BaseException = feed_errors
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            counters.last_error = str(first)
            raise FeedError(str(first)) from group
        finally:
            counters.state = "down"
            counters.disconnects += 1
            counters.subscribed = []

    async def _subscribe(
        self, conn: WsConnection, session: Session, task_status: trio.TaskStatus[None]
    ) -> None:
        """Send every subscribe request and read until each is acked, publishing data meanwhile."""
        counters = self._counters
        counters.state = "subscribing"
        requests = session.subscribe_requests()
        pending = {r.req_id: r for r in requests}
        order = [r.req_id for r in requests]
        for request in requests:
            await conn.send_text(request.payload)
        counters.rejected = {}
        subscribed: list[str] = []
        with trio.move_on_after(ACK_TIMEOUT_S) as scope:
            while pending:
                messages = await conn.receive_messages()
                for event in await self._handle(messages, session):
                    if not isinstance(event, Ack):
                        continue
                    req_id = (
                        event.req_id
                        if event.req_id in pending
                        else next((r for r in order if r in pending), None)
                    )
                    if req_id is None:
                        continue
                    request = pending.pop(req_id)
                    if event.success:
                        subscribed.extend(request.topics)
                        continue
                    refused = event.rejected or request.topics
                    subscribed.extend(t for t in request.topics if t not in refused)
                    for topic in refused:
                        counters.rejected[topic] = event.reason
                    log.error(
                        "subscription rejected",
                        extra={"feed": self.name, "topics": list(refused), "reason": event.reason},
                    )
        if scope.cancelled_caught:
            missing = sorted(t for r in pending.values() for t in r.topics)
            raise FeedError(f"{self.url}: no subscribe ack within {ACK_TIMEOUT_S} s for {missing}")
        counters.subscribed = subscribed
        counters.state = "streaming"
        task_status.started()

    async def _pump(self, conn: WsConnection, session: Session) -> None:
        stale = self._stale_timeout_s
        while True:
            with trio.move_on_after(stale) as scope:
                messages = await conn.receive_messages()
            if scope.cancelled_caught:
                raise FeedError(f"{self.url}: stale: nothing received for {stale} s")
            for event in await self._handle(messages, session):
                if isinstance(event, Ack) and not event.success:
                    log.error(
                        "late subscription rejection", extra={"feed": self.name, "reason": event.reason}
                    )

    async def _handle(self, messages: list[bytes], session: Session) -> list[Any]:
        """Publish the data frames of one read as one batch; return the control events."""
        counters = self._counters
        now = now_us()
        counters.last_message_at = now
        if not messages:
            return []
        counters.messages += len(messages)
        data: list[bytes] = []
        events: list[Any] = []
        for message in messages:
            counters.bytes += len(message)
            if session.is_data(message):
                data.append(message)
                continue
            event = session.control(message)
            if isinstance(event, Pong):
                counters.pongs += 1
            elif isinstance(event, UnknownControl):
                # The control decoder may still recognise a data frame whose keys come in another order.
                if event.reason.startswith("data frame"):
                    data.append(message)
                    continue
                counters.unknown_control += 1
                log.warning(
                    "unknown frame ignored",
                    extra={"feed": self.name, "reason": event.reason, "frame": message[:200]},
                )
            events.append(event)
        if data:
            counters.data_frames += len(data)
            await self._bus.publish([RawFrames(self.name, self.exchange, self.market, now, data)])
        return events

    async def _heartbeat(self, conn: WsConnection, session: Session) -> None:
        payload = session.heartbeat()
        if payload is None:
            return
        while True:
            await trio.sleep(self._ping_interval_s)
            await conn.send_text(payload)
