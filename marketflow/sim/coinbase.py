"""Coinbase Advanced Trade public WebSocket and REST, as the simulator speaks them (PROTOCOLS.md §9).

Products: every listed symbol `BTCUSDT` gives `BTC-USD` (and `SimConfig.coinbase_quiet` lists products
that never trade nor change). `/` (the market-data socket) takes `{"type":"subscribe"|"unsubscribe",
"channel":…, "product_ids":[…]}`, **one channel per message**; every accepted message is answered with a
`subscriptions` message listing the connection's subscriptions, a refused one with `{"type":"error"}`.

- Every message of a connection carries `sequence_num`, one counter across its channels from 0. Frames are
  shared by all subscribers, so the connection stamps the number as it writes them (`SequenceStamp`).
- `market_trades`: on subscribe a `snapshot` event of the product's last 100 trades, then `update` events
  every cut of the tape; `side` is the **maker's** (the tape's taker side inverted); trades inside a
  message are shuffled (not in id order); `trade_id` is contiguous per product.
- `level2` (`l2_data`): a snapshot of the whole book on subscribe, then the changed levels of every book
  update (`new_quantity` absolute, `"0"` deletes), asks as `offer`, `event_time` of snapshot levels 1970.
- `ticker`: a `snapshot` on subscribe, then an `update` per cut of the product's tape (last price, a
  running volume, the book's best bid and ask with sizes).
- `heartbeats`: one message a second while subscribed.
- Faults: a skipped book update (`skip_update`) is lost *and* consumes a sequence number on every
  connection carrying it; `sequence_jump(n)` makes every connection skip `n` numbers; the first subscribe
  must come within 5 s; a connection with no heartbeats subscription that has had no data message for
  60-90 s is closed, as the venue closes quiet channels; malformed frames and drops as for every venue.
- REST: `GET /api/v3/brokerage/market/products/{id}/ticker?limit=&start=&end=` (trades newest first,
  maker side, Unix-second window), 10 requests/s, then HTTP 429.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Protocol

import msgspec
import trio

from marketflow.model import SymbolError, split_native
from marketflow.sim.book import BookTick, SimBook
from marketflow.sim.faults import MalformedKind
from marketflow.sim.host import StreamHost
from marketflow.sim.http import HttpRequest, HttpResponse, RestHandler, ws_text_frame
from marketflow.sim.market import (
    ROW_ID,
    ROW_PRICE,
    ROW_SIDE,
    ROW_SIZE,
    ROW_T,
    Formats,
    FrameEncoder,
    FrameSink,
    Market,
    TradeRow,
    WireFrame,
    stable_crc,
)

EXCHANGE = "coinbase"
SPOT = "spot"
MARKETS: tuple[str, ...] = (SPOT,)
WS_PATH = "/coinbase/ws"
TICKER_PREFIX = "/api/v3/brokerage/market/products/"
SNAPSHOT_TRADES = 100
SUBSCRIBE_DEADLINE_S = 5.0
HEARTBEAT_S = 1.0
QUIET_CLOSE_S = (60.0, 90.0)
REST_LIMIT = 10
REST_WINDOW_S = 1.0
TICKER_MAX = 1000
SEQ = b"#SEQ#"
"""Where a payload's `sequence_num` goes; the connection writes the number in (`SequenceStamp`)."""
LOST = b"#LOST#"
"""A message that was lost on the way: it takes a sequence number and sends nothing."""
NOT_ALIASED = frozenset({"USDT-USDC", "EURC-USDC"})
_MAKER = {"Buy": "SELL", "Sell": "BUY"}
_encode = msgspec.json.Encoder()
_decode_request = msgspec.json.Decoder()


def products(symbols: tuple[str, ...] | frozenset[str]) -> tuple[str, ...]:
    """The Coinbase products of the simulator's listed symbols: `BTCUSDT` → `BTC-USD`."""
    out = []
    for symbol in symbols:
        try:
            base, _ = split_native(symbol)
        except SymbolError:
            continue
        out.append(f"{base}-USD")
    return tuple(dict.fromkeys(out))


def canonical(product: str) -> str:
    """Data channels tag `-USDC` products as `-USD` (§9.2)."""
    if product.endswith("-USDC") and product not in NOT_ALIASED:
        return product[:-1]
    return product


def iso_ns(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%09dZ" % frac  # noqa: UP031


def iso_ms(ms: int) -> str:
    seconds, frac = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%06dZ" % (frac * 1000)  # noqa: UP031


def envelope(channel: str, events: str) -> bytes:
    """A message with the sequence number left for the connection to write."""
    stamp = iso_ns(time.time_ns())
    head = '{"channel":"' + channel + '","client_id":"","timestamp":"' + stamp + '","sequence_num":'
    return head.encode() + SEQ + (',"events":' + events + "}").encode()


class SequenceStamp:
    """One connection's `sequence_num`: numbers every text message as it is written, frames it."""

    def __init__(self) -> None:
        self.next = 0
        self.jump = 0
        self.last_data = trio.current_time()

    def __call__(self, payload: bytes) -> bytes:
        if payload == LOST:
            self.next += 1
            return b""
        if SEQ not in payload[:200]:
            return ws_text_frame(payload)
        if payload.startswith((b'{"channel":"market_trades"', b'{"channel":"l2_data"')):
            self.last_data = trio.current_time()
        seq = self.next + self.jump
        self.next = seq + 1
        self.jump = 0
        return ws_text_frame(payload.replace(SEQ, str(seq).encode(), 1))


# -- trades ----------------------------------------------------------------------------------------------


def trades_events(product: str, rows: list[TradeRow], kind: str, shuffle: bool) -> str:
    trades = [
        '{"trade_id":"%s","product_id":"%s","price":"%s","size":"%s","side":"%s","time":"%s"}'  # noqa: UP031
        % (r[ROW_ID], product, r[ROW_PRICE], r[ROW_SIZE], _MAKER[r[ROW_SIDE]], iso_ms(r[ROW_T]))
        for r in rows
    ]
    if shuffle and len(trades) > 1:
        random.Random(rows[0][ROW_ID]).shuffle(trades)  # not in id order, as the venue sends them (§9.7)
    return '[{"type":"%s","trades":[%s]}]' % (kind, ",".join(trades))  # noqa: UP031


def trade_encoder(product: str, rules: CoinbaseRules) -> FrameEncoder:
    """`market_trades` update payloads of one product (unframed: the connection stamps and frames)."""

    def encode(rows: list[TradeRow], ts: int) -> bytes:
        if rules.lose_trades.get(product):
            rules.lose_trades[product] -= 1
            return LOST  # the message is lost: a sequence number and a trade-id jump
        return envelope("market_trades", trades_events(product, rows, "update", True))

    return encode


def ticker_events(product: str, kind: str, last: TradeRow | None, volume: Decimal, book: SimBook) -> str:
    formats = Formats(book.instrument)
    (bids, asks) = book.top(1)
    tick = {
        "type": "ticker",
        "product_id": product,
        "price": last[ROW_PRICE] if last is not None else "",
        "volume_24_h": format(volume, "f"),
        "best_bid": formats.price(bids[0][0]) if bids else "",
        "best_bid_quantity": formats.size(bids[0][1]) if bids else "",
        "best_ask": formats.price(asks[0][0]) if asks else "",
        "best_ask_quantity": formats.size(asks[0][1]) if asks else "",
    }
    return _encode.encode([{"type": kind, "tickers": [tick]}]).decode()


def ticker_encoder(product: str, book: SimBook, volume: Decimal) -> FrameEncoder:
    """`ticker` updates of one product, one per cut of its tape: the last price, the running volume and
    the book's best levels (unframed: the connection stamps and frames)."""
    total = [volume]

    def encode(rows: list[TradeRow], ts: int) -> bytes:
        total[0] += sum((Decimal(r[ROW_SIZE]) for r in rows), Decimal(0))
        return envelope(
            "ticker", ticker_events(product, "update", rows[-1] if rows else None, total[0], book)
        )

    return encode


# -- level2 ----------------------------------------------------------------------------------------------


class Level2Stream:
    """`level2` of one product: the whole book on subscribe, then every update's changed levels."""

    def __init__(self, book: SimBook, product: str) -> None:
        self.book = book
        self.product = product
        self.topic = "level2:" + product
        self.formats = Formats(book.instrument)
        self._sinks: set[FrameSink] = set()
        self.skipped = 0

    def active(self) -> bool:
        return bool(self._sinks)

    def sinks(self) -> set[FrameSink]:
        return self._sinks

    def _levels(self, side: str, levels: list[tuple[int, int]], event_time: str) -> list[str]:
        price, size = self.formats.price, self.formats.size
        return [
            '{"side":"%s","event_time":"%s","price_level":"%s","new_quantity":"%s"}'  # noqa: UP031
            % (side, event_time, price(p), size(q) if q else "0")
            for p, q in levels
        ]

    def snapshot(self) -> bytes:
        depth = max(len(self.book.bids), len(self.book.asks))
        bids, asks = self.book.top(depth)
        epoch = "1970-01-01T00:00:00Z"  # snapshot levels carry no time (§9.4)
        levels = self._levels("bid", bids, epoch) + self._levels("offer", asks, epoch)
        return self._payload("snapshot", levels)

    def _payload(self, kind: str, levels: list[str]) -> bytes:
        events = '[{"type":"%s","product_id":"%s","updates":[%s]}]' % (kind, self.product, ",".join(levels))  # noqa: UP031
        return envelope("l2_data", events)

    def add_sink(self, sink: FrameSink, combined: bool) -> WireFrame | None:
        self._sinks.add(sink)
        return WireFrame(self.snapshot(), self.topic)

    def remove_sink(self, sink: FrameSink) -> None:
        self._sinks.discard(sink)

    def on_tick(self, tick: BookTick, ts_ms: int) -> None:
        if tick.skip:  # lost: every connection carrying it sees the sequence jump
            self.skipped += 1
            frame = WireFrame(LOST, self.topic)
        else:
            now = iso_ms(ts_ms)
            levels = self._levels("bid", sorted(tick.bids.items(), reverse=True), now)
            levels += self._levels("offer", sorted(tick.asks.items()), now)
            frame = WireFrame(self._payload("update", levels), self.topic)
        frames = [frame]
        for sink in self._sinks:
            sink.push_frames(frames)

    def on_idle(self, ts_ms: int) -> None:
        pass

    def crossing_outstanding(self) -> bool:
        return False


# -- the WebSocket session ---------------------------------------------------------------------------


class CoinbaseHost(StreamHost, Protocol):
    """What a Coinbase session needs from its connection, beyond `StreamHost`."""

    stamp: Callable[[bytes], bytes] | None

    def push_frames(self, frames: list[WireFrame]) -> None: ...

    def close(self, code: int, reason: str, after: float = 0.0) -> None: ...


class CoinbaseRules:
    """What the venue lists and refuses, from the simulator's config."""

    def __init__(
        self,
        listed: tuple[str, ...],
        quiet: tuple[str, ...] = (),
        reject_topics: frozenset[str] = frozenset(),
        seed: int = 1,
    ) -> None:
        self.products = frozenset(listed) | frozenset(quiet)
        self.quiet = frozenset(quiet)
        self.reject_topics = reject_topics
        self.seed = seed
        self.lose_trades: dict[str, int] = {}
        """Fault: product → how many of its next `market_trades` messages are lost."""


class CoinbaseSession:
    """One client connection's Coinbase conversation."""

    def __init__(
        self, number: int, host: CoinbaseHost, rules: CoinbaseRules, market: Market, books: Any
    ) -> None:
        self.number = number
        self.host = host
        self.rules = rules
        self.market = market
        self.books = books  # (exchange, market, product) -> BookFeed
        self.stamp = SequenceStamp()
        host.stamp = self.stamp
        self.subscriptions: dict[str, list[str]] = {}
        self.subscribed_once = trio.Event()
        low, high = QUIET_CLOSE_S
        self.quiet_close_s = low + stable_crc("%d:%d" % (rules.seed, number)) % int(high - low + 1)  # noqa: UP031
        self.heartbeats = 0
        self.closing = False

    def _error(self, reason: str) -> None:
        self.host.send_control(
            _encode.encode({"type": "error", "message": "Failed to subscribe", "reason": reason})
        )

    def _subscriptions(self) -> None:
        listing = {channel: list(products) for channel, products in self.subscriptions.items() if products}
        self.host.send_control(
            envelope("subscriptions", _encode.encode([{"subscriptions": listing}]).decode())
        )

    def on_message(self, data: bytes | str) -> None:
        try:
            msg = _decode_request.decode(data)
        except msgspec.DecodeError:
            self._error("request is not JSON")
            return
        if not isinstance(msg, dict) or msg.get("type") not in ("subscribe", "unsubscribe"):
            self._error("type must be subscribe or unsubscribe")
            return
        channel = msg.get("channel")
        if "channels" in msg or not isinstance(channel, str):
            self._error("exactly one channel per message")  # §9.2
            return
        ids = msg.get("product_ids", [])
        if not isinstance(ids, list) or not all(isinstance(p, str) for p in ids):
            self._error("product_ids must be a list of product ids")
            return
        if msg["type"] == "subscribe":
            self._subscribe(channel, ids)
        else:
            self._unsubscribe(channel, ids)

    def _subscribe(self, channel: str, ids: list[str]) -> None:
        if channel == "heartbeats":
            self.subscriptions["heartbeats"] = ["heartbeats"]
            self.host.note_subscribes(1, 0)
            self.subscribed_once.set()
            self._subscriptions()
            return
        if channel not in ("market_trades", "level2", "ticker") or not ids:
            self.host.note_subscribes(0, 1)
            self._error(f"{channel} needs product_ids" if ids == [] else f"unknown channel {channel}")
            return
        for product in ids:
            if (
                canonical(product) not in self.rules.products
                or f"{channel}:{product}" in self.rules.reject_topics
            ):
                self.host.note_subscribes(0, 1)
                self._error(f"{product} is not a valid product")
                return
        self.host.note_subscribes(len(ids), 0)
        self.subscribed_once.set()
        mine = self.subscriptions.setdefault(channel, [])
        new = [p for p in ids if p not in mine]
        mine += new
        self._subscriptions()
        for product in new:  # after the ack, so the snapshots follow it
            self._attach(channel, product)

    def _attach(self, channel: str, product: str) -> None:
        tagged = canonical(product)
        topic = f"{channel}:{product}"
        quiet = tagged in self.rules.quiet
        if channel == "market_trades":
            tape = self.market.tape(SPOT, tagged, EXCHANGE)
            recent = tape.history.latest(SNAPSHOT_TRADES)
            payload = envelope("market_trades", trades_events(tagged, recent, "snapshot", True))
            self.host.push_frames([WireFrame(payload, topic)])
            if not quiet:
                self.host.subscribe_trades(
                    EXCHANGE, SPOT, tagged, topic, lambda: trade_encoder(tagged, self.rules)
                )
            return
        if channel == "ticker":
            tape = self.market.tape(SPOT, tagged, EXCHANGE)
            book = self.books(EXCHANGE, SPOT, tagged).book
            history = tape.history.rows()
            volume = sum((Decimal(r[ROW_SIZE]) for r in history), Decimal(0))
            last = history[-1] if history else None
            payload = envelope("ticker", ticker_events(tagged, "snapshot", last, volume, book))
            self.host.push_frames([WireFrame(payload, topic)])
            if not quiet:
                self.host.subscribe_trades(
                    EXCHANGE, SPOT, tagged, topic, lambda: ticker_encoder(tagged, book, volume)
                )
            return
        if quiet:  # listed, never changing: the snapshot alone
            stream = Level2Stream(self.books(EXCHANGE, SPOT, tagged).book, tagged)
            self.host.push_frames([WireFrame(stream.snapshot(), topic)])
            return
        self.host.subscribe_book(
            EXCHANGE, SPOT, tagged, topic, False, lambda book: Level2Stream(book, tagged)
        )

    def _unsubscribe(self, channel: str, ids: list[str]) -> None:
        mine = self.subscriptions.get(channel, [])
        for product in ids or list(mine):
            if product in mine:
                mine.remove(product)
                self.host.unsubscribe(f"{channel}:{product}")
        if channel == "heartbeats":
            self.subscriptions.pop("heartbeats", None)
        self._subscriptions()

    def malformed_frame(self, kind: MalformedKind, symbol: str, ts_ms: int) -> tuple[bytes, bool]:
        """A broken frame (never numbered: it carries no `sequence_num`)."""
        if kind is MalformedKind.NOT_JSON:
            return b"simulated garbage <not json> " + symbol.encode(), False
        if kind is MalformedKind.BINARY:
            return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xffsimulated binary frame", True
        trade: dict[str, Any] = {"trade_id": "1", "product_id": symbol, "price": "1.0", "size": "1"}
        trade |= {"side": "BUY", "time": iso_ms(ts_ms)}
        channel = "market_trades"
        if kind is MalformedKind.UNKNOWN_TOPIC:
            channel = "sim_unknown"
        elif kind is MalformedKind.BAD_PRICE:
            trade["price"] = "abc"
        elif kind is MalformedKind.MISSING_SIDE:
            del trade["side"]
        payload = _encode.encode({"channel": channel, "events": [{"type": "update", "trades": [trade]}]})
        if kind is MalformedKind.TRUNCATED_JSON:
            payload = payload[: len(payload) // 2]
        return payload, False

    def on_control(self, ping: bool, payload: bytes) -> None:
        """Protocol pings are answered by the protocol."""

    def sequence_jump(self, count: int) -> None:
        """The next message's `sequence_num` is `count` higher than it should be (messages lost)."""
        self.stamp.jump += count

    async def run(self) -> None:
        """The 5 s subscribe deadline, heartbeats, and closing a quiet connection without heartbeats."""
        with trio.move_on_after(SUBSCRIBE_DEADLINE_S):
            await self.subscribed_once.wait()
        if not self.subscribed_once.is_set():
            self.closing = True
            self.host.close(1008, "no subscribe within 5 s")
            return
        while True:
            await trio.sleep(HEARTBEAT_S)
            now = trio.current_time()
            if "heartbeats" in self.subscriptions:
                self.heartbeats += 1
                beat = {"current_time": iso_ns(time.time_ns()), "heartbeat_counter": self.heartbeats}
                events = _encode.encode([beat]).decode()
                self.host.send_control(envelope("heartbeats", events))
            elif now - self.stamp.last_data >= self.quiet_close_s and not self.closing:
                self.closing = True
                self.host.close(1000, "no updates")  # the venue closes quiet channels (§9.3)
                return


# -- REST ------------------------------------------------------------------------------------------------


class CoinbaseRest:
    """`/api/v3/brokerage/market/products/{id}/ticker` per listed product, 10 requests/s."""

    def __init__(self, market: Market, rules: CoinbaseRules) -> None:
        self.market = market
        self.rules = rules
        self.requests = 0
        self.throttled = 0
        self._recent: deque[float] = deque()

    def routes(self) -> dict[str, RestHandler]:
        return {TICKER_PREFIX + p + "/ticker": self._ticker for p in sorted(self.rules.products)}

    async def _ticker(self, request: HttpRequest) -> HttpResponse:
        self.requests += 1
        now = trio.current_time()
        recent = self._recent
        while recent and recent[0] <= now - REST_WINDOW_S:
            recent.popleft()
        if len(recent) >= REST_LIMIT:
            self.throttled += 1
            return HttpResponse(429, b'{"error":"RATE_LIMIT_EXCEEDED","message":"Too many requests"}')
        recent.append(now)
        product = canonical(request.path[len(TICKER_PREFIX) : -len("/ticker")])
        limit_text = (request.query.get("limit") or [""])[0]
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= TICKER_MAX:
            return HttpResponse(400, b'{"error":"INVALID_ARGUMENT","message":"limit must be 1..1000"}')
        bounds = []
        for name in ("start", "end"):
            text = (request.query.get(name) or [""])[0]
            if text and not text.isdigit():
                return HttpResponse(
                    400, _encode.encode({"error": "INVALID_ARGUMENT", "message": f"bad {name}"})
                )
            bounds.append(int(text) * 1000 if text else None)
        start_ms, end_ms = bounds
        tape = self.market.tape(SPOT, product, EXCHANGE)
        out = []
        for row in reversed(tape.history.rows()):
            if (end_ms is not None and row[ROW_T] >= end_ms) or (
                start_ms is not None and row[ROW_T] < start_ms
            ):
                continue
            out.append(
                {
                    "trade_id": row[ROW_ID],
                    "product_id": product,
                    "price": row[ROW_PRICE],
                    "size": row[ROW_SIZE],
                    "time": iso_ms(row[ROW_T]),
                    "side": _MAKER[row[ROW_SIDE]],
                    "bid": "",
                    "ask": "",
                }
            )
            if len(out) >= int(limit_text):
                break
        return HttpResponse(200, _encode.encode({"trades": out, "best_bid": "", "best_ask": ""}))


__all__ = [
    "EXCHANGE",
    "MARKETS",
    "WS_PATH",
    "CoinbaseRest",
    "CoinbaseRules",
    "CoinbaseSession",
    "Level2Stream",
    "SequenceStamp",
    "canonical",
    "products",
    "trade_encoder",
]
