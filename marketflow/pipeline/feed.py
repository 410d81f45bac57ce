"""The feed actor: one exchange connection, kept subscribed, publishing raw frames in batches.

A feed instance lives as long as its connections do. When the live connection fails (closed, broken,
stale, no ack) the feed raises `FeedError` and its supervisor starts a fresh one after a backoff with full
jitter — that is the reconnect loop, and it resubscribes every time. Counters live in a `FeedCounters` the
daemon keeps across instances, so statistics survive reconnects.

Venues that cut connections at a fixed age (`Session.max_lifetime_s`) or announce a restart (`Reconnect`)
get a replacement connection opened and subscribed *before* the old one closes. The old one is then closed
with a closing handshake, and read and published until the venue's close reply: whatever the venue sent on it
before the replacement was subscribed is still in flight and must not be dropped. The replacement's frames
are held back until the old connection has ended, then published in order; the overlap is de-duplicated
downstream (trade ids, book update ids).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence

import attrs
import trio

from marketflow.exchanges.base import (
    Ack,
    ControlEvent,
    DataFrame,
    Pong,
    Reconnect,
    Session,
    SubscribeRequest,
    UnknownControl,
)
from marketflow.exchanges.ws import MAX_MESSAGE, FeedError, WsConnection, connect_ws
from marketflow.model import RawFrames, now_us
from marketflow.runtime.bus import Bus

log = logging.getLogger("marketflow.feed")

CONNECT_TIMEOUT_S = 10.0
ACK_TIMEOUT_S = 10.0
ROTATE_RETRY_S = 5.0
RETIRE_TIMEOUT_S = 5.0
"""How long a retired connection may take to answer our close frame before it is cut (what it had not
delivered by then is left to the gap detectors)."""


@attrs.define
class FeedCounters:
    """Counters that outlive one connection; `statistics()` snapshots them."""

    connects: int = 0
    disconnects: int = 0
    rotations: int = 0
    messages: int = 0
    data_frames: int = 0
    bytes: int = 0
    pongs: int = 0
    unknown_control: int = 0
    state: str = "idle"
    connected_at: int | None = None
    down_since: int | None = None
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
    rotations: int
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


@attrs.define(eq=False)
class _Link:
    """One WebSocket connection of the feed and what it still owes (acks, held-back frames)."""

    conn: WsConnection
    session: Session
    live: bool
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    done: trio.Event = attrs.Factory(trio.Event)
    lock: trio.StrictFIFOLock = attrs.Factory(trio.StrictFIFOLock)
    retired: bool = False
    held: list[RawFrames] = attrs.Factory(list)
    pending: dict[str, tuple[SubscribeRequest, float]] = attrs.Factory(dict)
    order: list[str] = attrs.Factory(list)
    last_send: float = float("-inf")


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
        read_coalesce_s: float = 0.0,
        max_lifetime_s: float | None = None,
        on_reconnect: Callable[[str, int, int], None] | None = None,
        on_disconnect: Callable[[str], None] | None = None,
        capture: Callable[[str, int, list[bytes]], None] | None = None,
        max_message: int = MAX_MESSAGE,
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
        self._read_coalesce_s = read_coalesce_s
        self._max_lifetime_s = max_lifetime_s
        self._on_reconnect = on_reconnect
        self._on_disconnect = on_disconnect
        # Gets every socket read, data and control alike, with its receive time; must not block.
        self._capture = capture
        self._max_message = max_message
        self._scope = trio.CancelScope()
        self._stopping = False
        self._live: _Link | None = None
        self._rotate_now = trio.Event()

    def request_stop(self) -> None:
        """Stopping a feed needs no draining: close the connections now (what was read is published)."""
        self._stopping = True
        self._scope.cancel()

    def request_rotation(self) -> None:
        """Open a replacement connection, then retire the current one (no data is missed)."""
        self._rotate_now.set()

    async def resubscribe(self, topics: Sequence[str]) -> bool:
        """Resubscribe topics on the live connection (the venue answers with a fresh book snapshot).

        Returns False when there is no live connection — a new one subscribes to everything anyway.
        """
        link = self._live
        if link is None:
            return False
        await self._send_requests(link, link.session.resubscribe_requests(topics))
        return True

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
            rotations=c.rotations,
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
        counters = self._counters
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._live = await nursery.start(self._connection, True)
                    task_status.started()
                    nursery.start_soon(self._rotator, nursery)
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
        except FeedError as exc:
            counters.last_error = str(exc)
            raise
        finally:
            was_live = self._live is not None
            self._live = None
            counters.state = "down"
            counters.subscribed = []
            if counters.down_since is None:
                counters.down_since = now_us()
            if was_live and self._on_disconnect is not None:
                self._on_disconnect(self.name)

    async def _connection(self, live: bool, *, task_status: trio.TaskStatus[_Link]) -> None:
        """Connect, subscribe (publishing or holding back data meanwhile), then pump until retired."""
        counters = self._counters
        if live:
            counters.state = "connecting"
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                conn = await connect_ws(
                    self.url,
                    ssl_context=self._ssl_context,
                    max_message=self._max_message,
                    coalesce_s=self._read_coalesce_s,
                )
        except trio.TooSlowError as exc:
            raise FeedError(f"{self.url}: connect timed out after {CONNECT_TIMEOUT_S} s") from exc
        counters.connects += 1
        link = _Link(conn, self._session_factory(), live)
        try:
            with link.scope:
                async with conn, trio.open_nursery() as nursery:
                    await self._subscribe(link)
                    log.info(
                        "feed subscribed",
                        extra={"feed": self.name, "url": self.url, "topics": len(counters.subscribed)},
                    )
                    task_status.started(link)
                    nursery.start_soon(self._heartbeat, link)
                    await self._pump(link)
                    nursery.cancel_scope.cancel()  # retired and closed: the heartbeat goes too
        finally:
            link.done.set()
            if link.live and not link.retired and not self._stopping:
                counters.disconnects += 1

    async def _subscribe(self, link: _Link) -> None:
        """Send every subscribe request and read until each is acked."""
        counters = self._counters
        if link.live:
            counters.state = "subscribing"
        await self._send_requests(link, link.session.subscribe_requests())
        rejected: dict[str, str] = {}
        with trio.move_on_after(ACK_TIMEOUT_S):
            while link.pending:
                messages = await link.conn.receive_messages()
                again: list[SubscribeRequest] = []
                for event in await self._handle(link, messages):
                    again += self._settle(link, event, rejected)
                await self._send_requests(link, again)
        if link.pending:
            missing = sorted(t for r, _ in link.pending.values() for t in r.topics)
            raise FeedError(f"{self.url}: no subscribe ack within {ACK_TIMEOUT_S} s for {missing}")
        counters.rejected = rejected
        counters.subscribed = [t for t in link.session.topics if t not in rejected]
        now = now_us()
        counters.connected_at = now
        counters.state = "streaming"
        if counters.down_since is not None:
            down_since, counters.down_since = counters.down_since, None
            if self._on_reconnect is not None:
                self._on_reconnect(self.name, down_since, now)

    async def _send_requests(self, link: _Link, requests: list[SubscribeRequest]) -> None:
        """Send control requests no faster than the venue's inbound limit; their acks are tracked."""
        interval = link.session.send_interval_s
        for request in requests:
            wait = link.last_send + interval - trio.current_time()
            if wait > 0:
                await trio.sleep(wait)
            if link.retired:
                return  # closing: it takes no more requests (the replacement subscribed everything)
            link.pending[request.req_id] = (request, trio.current_time())
            link.order.append(request.req_id)
            await link.conn.send_text(request.payload)
            link.last_send = trio.current_time()

    def _settle(self, link: _Link, event: ControlEvent, rejected: dict[str, str]) -> list[SubscribeRequest]:
        """Settle one control event; returns the requests to send again (the others of a request the
        venue refused whole for some of its topics)."""
        if isinstance(event, Reconnect):
            if link.retired:
                return []  # its replacement is up already
            log.warning("feed asked to reconnect", extra={"feed": self.name, "reason": event.reason})
            self._rotate_now.set()
            return []
        if not isinstance(event, Ack):
            return []
        # Match by id; a venue that does not echo ids acks in order.
        req_id = (
            event.req_id
            if event.req_id in link.pending
            else next((r for r in link.order if r in link.pending), None)
        )
        if req_id is None:
            return []
        request, _ = link.pending.pop(req_id)
        link.order.remove(req_id)
        if event.success:
            return []
        refused = event.rejected or request.topics
        if event.others_refused:  # the venue named a product: its topics in this request
            refused = tuple(t for t in event.rejected if t in request.topics) or request.topics
        for topic in refused:
            rejected[topic] = event.reason
        self._counters.rejected.update(rejected)
        self._counters.subscribed = [t for t in self._counters.subscribed if t not in rejected]
        log.error(
            "subscription rejected",
            extra={"feed": self.name, "topics": list(refused), "reason": event.reason},
        )
        others = [t for t in request.topics if t not in refused] if event.others_refused else []
        return link.session.subscribe_topic_requests(others) if others else []

    async def _pump(self, link: _Link) -> None:
        """Read and publish until the connection fails; returns once a retired connection has closed."""
        stale = self._stale_timeout_s
        while True:
            with trio.move_on_after(stale) as scope:
                try:
                    messages = await link.conn.receive_messages()
                except FeedError:
                    if link.retired:
                        return  # the venue answered our close (or dropped the socket): all is read
                    raise
            if scope.cancelled_caught:
                if link.retired:
                    return  # no close reply: `_retire` cuts it anyway
                if link.conn.holds_messages():
                    continue  # data came as the deadline passed (a stalled process): not stale, read it
                raise FeedError(f"{self.url}: stale: nothing received for {stale} s")
            again: list[SubscribeRequest] = []
            for event in await self._handle(link, messages):
                again += self._settle(link, event, {})
            await self._send_requests(link, again)
            if link.pending and not link.retired:
                oldest = min(sent for _, sent in link.pending.values())
                if trio.current_time() - oldest > ACK_TIMEOUT_S:
                    missing = sorted(t for r, _ in link.pending.values() for t in r.topics)
                    raise FeedError(f"{self.url}: no ack within {ACK_TIMEOUT_S} s for {missing}")

    async def _handle(self, link: _Link, messages: list[bytes]) -> list[ControlEvent]:
        """Publish (or hold back) the data frames of one read as one batch; return the control events."""
        counters = self._counters
        now = now_us()
        counters.last_message_at = now
        if not messages:
            return []
        if self._capture is not None:
            self._capture(self.name, now, messages)
        counters.messages += len(messages)
        session = link.session
        check = session.sequence_check
        if check is None and all(map(session.is_data, messages)):
            # What a feed reads all day: data frames only, published as read (no per-frame loop).
            counters.bytes += sum(map(len, messages))
            counters.data_frames += len(messages)
            await self._emit(link, [RawFrames(self.name, self.exchange, self.market, now, messages)])
            return []
        data: list[bytes] = []
        events: list[ControlEvent] = []
        for message in messages:
            counters.bytes += len(message)
            if check is not None:
                # Messages were lost on this connection: the venue's marker goes first, so its decoder
                # breaks the connection's books before anything that came after the loss is applied.
                marker = check(message)
                if marker is not None:
                    data.append(marker)
            if session.is_data(message):
                data.append(message)
                continue
            event = session.control(message)
            if isinstance(event, DataFrame):
                # The control decoder recognised a data frame whose keys come in another order.
                data.append(message)
                continue
            if isinstance(event, Pong):
                counters.pongs += 1
            elif isinstance(event, UnknownControl):
                counters.unknown_control += 1
                log.warning(
                    "unknown frame ignored",
                    extra={"feed": self.name, "reason": event.reason, "frame": message[:200]},
                )
            events.append(event)
        if data:
            counters.data_frames += len(data)
            await self._emit(link, [RawFrames(self.name, self.exchange, self.market, now, data)])
        return events

    async def _emit(self, link: _Link, batch: list[RawFrames]) -> None:
        async with link.lock:
            if not link.live:
                link.held.extend(batch)
                return
            if link.held:
                batch = link.held + batch
                link.held = []
            if batch:
                # Shielded: a batch is either given to every subscriber or to none, even when the
                # connection is being retired or the feed stopped.
                with trio.CancelScope(shield=True):
                    await self._bus.publish(batch)

    async def _heartbeat(self, link: _Link) -> None:
        payload = link.session.heartbeat()
        if payload is None:
            return
        while True:
            await trio.sleep(self._ping_interval_s)
            if link.retired:
                return  # a closing connection takes no more data frames
            await link.conn.send_text(payload)

    async def _retire(self, link: _Link) -> None:
        """Close `link` and wait until it has published everything the venue sent before reading our close.

        Cancelling its read instead would drop the frames still in flight or in the socket buffer, sent
        before the replacement was subscribed and so never repeated on it (a trade gap, found under load).
        """
        link.retired = True
        with contextlib.suppress(FeedError):  # broken already: its pump ends on its own
            await link.conn.start_close()
        with trio.move_on_after(RETIRE_TIMEOUT_S):
            await link.done.wait()
        link.scope.cancel()
        await link.done.wait()

    async def _rotator(self, nursery: trio.Nursery) -> None:
        while True:
            link = self._live
            assert link is not None
            lifetime = self._max_lifetime_s or link.session.max_lifetime_s
            with trio.move_on_after(lifetime if lifetime is not None else float("inf")):
                await self._rotate_now.wait()
            self._rotate_now = trio.Event()
            try:
                replacement: _Link = await nursery.start(self._connection, False)
            except (FeedError, ExceptionGroup) as exc:
                log.warning(
                    "replacement connection failed; keeping the current one",
                    extra={"feed": self.name, "error": str(exc), "retry_in_s": ROTATE_RETRY_S},
                )
                await trio.sleep(ROTATE_RETRY_S)
                self._rotate_now.set()
                continue
            self._live = replacement  # resubscribes go to the connection that stays
            await self._retire(link)
            replacement.live = True
            self._counters.rotations += 1
            await self._emit(replacement, [])
            log.info("feed connection replaced", extra={"feed": self.name, "url": self.url})
