"""OKX v5 public WebSocket and REST, as the simulator speaks them (PROTOCOLS.md §8).

Instruments: every listed symbol `BTCUSDT` gives spot `BTC-USDT`, linear swap `BTC-USDT-SWAP`, inverse
swap `BTC-USD-SWAP` and inverse futures `BTC-USD-270625`. `/ws/v5/public` takes `subscribe`/`unsubscribe`
with `args` of `{channel, instId}` and answers each arg on its own (`event: subscribe`, or `event: error`
with code 60018 for an unknown or refused instrument, the others unaffected); the text `ping` gets `pong`.

- `trades`: one message per taker order, `tradeId` = its last fill id and `count` = its fills (contiguous
  ids per instrument), `side` = the taker's. A subscription is answered at once with the latest trade
  already generated (possibly older than the subscription), as OKX does.
- `books`: a snapshot (`prevSeqId` -1) of the top 400 levels, then increments; `seqId` jumps by 1..50 per
  message and `prevSeqId` is the previous `seqId`; a keep-alive (`prevSeqId == seqId`, no levels) after
  `keepalive_s` without change. `checksum` is the signed CRC32 of the top 25 as sent (or 0 with
  `zero_checksum`, like OKX since 2026-06); `legacy` leaves `seqId`/`prevSeqId` out (old servers).
  Faults: skipped updates (a chain break), a restart (`seqId` below `prevSeqId`: a reset after
  maintenance), a wrong checksum (`bad_checksum`), a crossing message.
- `books5`: the top 5 as a snapshot message whenever it changes.
- REST: `/api/v5/public/instruments`, `/api/v5/market/history-trades` (individual fills, newest first,
  `after` = ids below), `/api/v5/market/books`; 20 requests per 2 s per path, then HTTP 429 code 50011.
"""

from __future__ import annotations

import functools
import random
import time
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import msgspec
import trio

from marketflow.model import SymbolError, split_native
from marketflow.sim.book import BookStream, BookTick, Crossing, SimBook
from marketflow.sim.derivs import OKX_INST_TYPES, OkxLiquidationStream, OkxMarketDataStream
from marketflow.sim.faults import MalformedKind
from marketflow.sim.http import HttpRequest, HttpResponse, RestHandler, ws_text_frame
from marketflow.sim.market import (
    ROW_LAST,
    ROW_PRICE,
    ROW_SEQ,
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

EXCHANGE = "okx"
WS_PATH = "/ws/v5/public"
SPOT = "spot"
SWAP = "swap"
FUTURES = "futures"
MARKETS: tuple[str, ...] = (SPOT, SWAP, FUTURES)
FUTURES_EXPIRY = "270625"
BOOK_DEPTHS = {"books": 400, "books5": 5}
CHECKSUM_LEVELS = 25
SEQ_BASE = 10_000_000_000
RESET_SEQ = 1_000
KEEPALIVE_S = 60.0
REST_LIMIT = 20
REST_WINDOW_S = 2.0
HISTORY_MAX = 100
ERR_NOT_FOUND = "60018"
ERR_BAD_REQUEST = "60012"
INST_TYPES = {SPOT: "SPOT", SWAP: "SWAP", FUTURES: "FUTURES"}
_SIDES = {"Buy": "buy", "Sell": "sell"}
MARKET_DATA_CHANNELS = frozenset(
    {"tickers", "mark-price", "index-tickers", "funding-rate", "open-interest", "liquidation-orders"}
)


def index_of(inst: str) -> str:
    return "-".join(inst.split("-")[:2])


def instruments(symbols: frozenset[str] | tuple[str, ...]) -> dict[str, str]:
    """instId → market, for the simulator's listed symbols (`BTCUSDT` → four instruments)."""
    out: dict[str, str] = {}
    for symbol in sorted(symbols):
        try:
            base, quote = split_native(symbol)
        except SymbolError:
            continue
        out[f"{base}-{quote}"] = SPOT
        out[f"{base}-{quote}-SWAP"] = SWAP
        out[f"{base}-USD-SWAP"] = SWAP
        out[f"{base}-USD-{FUTURES_EXPIRY}"] = FUTURES
    return out


def contract(inst: str) -> tuple[str, str, str] | None:
    """(ctVal, ctValCcy, ctType) of a derivative instrument; None on spot."""
    parts = inst.split("-")
    if len(parts) == 2:
        return None
    base, quote = parts[0], parts[1]
    if quote == "USD":  # inverse: one contract is worth a fixed amount of USD
        return ("100" if base == "BTC" else "10"), "USD", "inverse"
    value = {"BTC": "0.01", "ETH": "0.1"}.get(base, "1")
    return value, base, "linear"


def _decimal_text(decimals: int) -> str:
    return "1" if decimals <= 0 else "0." + "0" * (decimals - 1) + "1"


def checksum_of(bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> int:
    """OKX's signed CRC32 of the top 25 levels per side, best first (the simulator's own copy)."""
    parts: list[str] = []
    for i in range(min(max(len(bids), len(asks)), CHECKSUM_LEVELS)):
        if i < len(bids):
            parts += bids[i]
        if i < len(asks):
            parts += asks[i]
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


# -- trades ----------------------------------------------------------------------------------------------


class TradeEncoder:
    """`trades` messages of one instrument (one per taker order)."""

    def __init__(self, inst: str) -> None:
        self._head = '{"arg":{"channel":"trades","instId":"' + inst + '"},"data":['
        self._trade = (
            '{"instId":"' + inst + '","tradeId":"%d","px":"%s","sz":"%s","side":"%s","ts":"%d",'
            '"count":"%d","source":"0","seqId":%d}'
        )

    def payload(self, rows: list[TradeRow]) -> bytes:
        trade = self._trade
        body = ",".join(
            [
                trade
                % (
                    r[ROW_LAST],
                    r[ROW_PRICE],
                    r[ROW_SIZE],
                    _SIDES[r[ROW_SIDE]],
                    r[ROW_T],
                    r[ROW_LAST] - r[ROW_SEQ] + 1,
                    r[ROW_LAST],
                )
                for r in rows
            ]
        )
        return (self._head + body + "]}").encode()

    def __call__(self, rows: list[TradeRow], ts_ms: int) -> bytes:
        return ws_text_frame(self.payload(rows))


def fills(row: TradeRow) -> list[tuple[int, str, str, str, int]]:
    """One taker order's fills as REST lists them: (tradeId, px, sz, side, ts), sizes summing exactly."""
    first, last = row[ROW_SEQ], row[ROW_LAST]
    count = last - first + 1
    text = row[ROW_SIZE]
    decimals = len(text) - text.index(".") - 1 if "." in text else 0
    steps = int(text.replace(".", ""))
    share, rest = divmod(steps, count)
    out = []
    for n in range(count):
        part = share + (rest if n == count - 1 else 0)
        whole, frac = divmod(part, 10**decimals)
        size = "%d.%0*d" % (whole, decimals, frac) if decimals else str(part)  # noqa: UP031
        out.append((first + n, row[ROW_PRICE], size, _SIDES[row[ROW_SIDE]], row[ROW_T]))
    return out


# -- books -----------------------------------------------------------------------------------------------


@attrs.frozen
class OkxRules:
    """What the venue lists and refuses, and how its books behave, from the simulator's config."""

    instruments: dict[str, str]
    reject_topics: frozenset[str] = frozenset()
    zero_checksum: bool = False
    legacy_books: bool = False
    keepalive_s: float = KEEPALIVE_S
    book_rate: float = 10.0
    out_of_order_every: int | None = None


class OkxBookStream:
    """`books` (400 levels, increments) or `books5` (5-level snapshots) of one instrument."""

    def __init__(self, channel: str, book: SimBook, rules: OkxRules) -> None:
        self.channel = channel
        self.depth = BOOK_DEPTHS[channel]
        self.book = book
        self.rules = rules
        self.formats = Formats(book.instrument)
        inst = book.symbol
        self.topic = channel + ":" + inst
        self._rng = random.Random(f"okx-seq:{self.topic}:{book.category}")
        self.seq = SEQ_BASE + stable_crc(self.topic) % 1_000_000_000
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.bad_checksum_next = False
        self.keepalive_next = False
        self.keepalives = 0
        self.skipped = 0
        self._skip = 0
        self._crossing = Crossing()
        self._cross_size = max(1, int(book.instrument.mean_size_steps))
        self._sinks: set[FrameSink] = set()
        self._last_sent = trio.current_time()
        self._head = '{"arg":{"channel":"' + channel + '","instId":"' + inst + '"}'

    def active(self) -> bool:
        return bool(self._sinks)

    def sinks(self) -> set[FrameSink]:
        return self._sinks

    def add_sink(self, sink: FrameSink, combined: bool) -> WireFrame | None:
        if not self._sinks:  # (re)activated: publish the book as it is now
            self.bids, self.asks = self.book.top_maps(self.depth)
            self.seq += 1 + int(self._rng.random() * 50)
        self._sinks.add(sink)
        return self._frame("snapshot", self.bids, self.asks, -1, self.seq, self._now_ms())

    def remove_sink(self, sink: FrameSink) -> None:
        self._sinks.discard(sink)

    @staticmethod
    def _now_ms() -> int:
        return time.time_ns() // 1_000_000

    def _text(self, levels: list[tuple[int, int]]) -> list[tuple[str, str]]:
        formats = self.formats
        return [(formats.price(p), formats.size(q) if q else "0") for p, q in levels]

    def _levels(self, levels: list[tuple[str, str]]) -> str:
        return ",".join([f'["{p}","{q}","0","{0 if q == "0" else 1 + len(q) % 5}"]' for p, q in levels])

    def _frame(
        self, action: str, bids: dict[int, int], asks: dict[int, int], prev: int, seq: int, ts: int
    ) -> WireFrame:
        bid_text = self._text(sorted(bids.items(), reverse=True))
        ask_text = self._text(sorted(asks.items()))
        if self.rules.zero_checksum:
            crc = 0
        else:
            top_bids, top_asks = sorted(self.bids, reverse=True), sorted(self.asks)
            crc = checksum_of(
                self._text([(p, self.bids[p]) for p in top_bids[:CHECKSUM_LEVELS]]),
                self._text([(p, self.asks[p]) for p in top_asks[:CHECKSUM_LEVELS]]),
            )
            if self.bad_checksum_next:
                self.bad_checksum_next = False
                crc = crc + 1 if crc != -1 else 1
        head = self._head
        if self.channel == "books":
            head += ',"action":"' + action + '"'
        body = (
            head
            + ',"data":[{"asks":['
            + self._levels(ask_text)
            + '],"bids":['
            + self._levels(bid_text)
            + '],"ts":"%d"' % ts  # noqa: UP031
        )
        if self.channel == "books":
            body += ',"checksum":%d' % crc  # noqa: UP031
            if not self.rules.legacy_books:
                body += ',"prevSeqId":%d,"seqId":%d' % (prev, seq)  # noqa: UP031
        else:
            body += ',"instId":"%s","seqId":%d' % (self.book.symbol, seq)  # noqa: UP031
        self._last_sent = trio.current_time()
        return WireFrame(ws_text_frame((body + "}]}").encode()), self.topic)

    def _publish(self, frame: WireFrame) -> None:
        frames = [frame]
        for sink in self._sinks:
            sink.push_frames(frames)

    def on_tick(self, tick: BookTick, ts_ms: int) -> None:
        if tick.skip:
            self._skip += 1
        crossing = self._crossing
        crossing.pending = crossing.pending or tick.cross
        bids, asks = self.book.top_maps(self.depth)
        bid_changes = {p: q for p, q in bids.items() if self.bids.get(p) != q}
        bid_changes.update({p: 0 for p in self.bids.keys() - bids.keys()})
        ask_changes = {p: q for p, q in asks.items() if self.asks.get(p) != q}
        ask_changes.update({p: 0 for p in self.asks.keys() - asks.keys()})
        if not bid_changes and not ask_changes and not crossing.outstanding and not tick.restart:
            return
        prev = self.seq
        if tick.restart:  # maintenance: the sequence starts again below where it was
            self.seq = RESET_SEQ + int(self._rng.random() * 1000)
        else:
            self.seq += 1 + int(self._rng.random() * 50)
        self.bids, self.asks = bids, asks
        if self._skip:
            self._skip -= 1
            self.skipped += 1
            return
        if self.channel == "books5":
            self._publish(self._frame("snapshot", bids, asks, prev, self.seq, ts_ms))
            return
        if crossing.outstanding:
            crossing.apply(bids, min(asks), self._cross_size, bid_changes)
        self._publish(self._frame("update", bid_changes, ask_changes, prev, self.seq, ts_ms))

    def on_idle(self, ts_ms: int) -> None:
        """No change for `keepalive_s`: `prevSeqId == seqId` with no levels."""
        due = trio.current_time() - self._last_sent >= self.rules.keepalive_s
        if self.channel == "books" and (due or self.keepalive_next):
            self.keepalive_next = False
            self.keepalives += 1
            self._publish(self._frame("update", {}, {}, self.seq, self.seq, ts_ms))

    def crossing_outstanding(self) -> bool:
        return self._crossing.outstanding


# -- the WebSocket session ---------------------------------------------------------------------------


class OkxHost(Protocol):
    """What a session needs from its connection."""

    def send_control(self, payload: bytes) -> None: ...

    def push_frames(self, frames: list[WireFrame]) -> None: ...

    def subscribe_trades(
        self, exchange: str, category: str, symbol: str, channel: str, encoder: Callable[[], FrameEncoder]
    ) -> None: ...

    def subscribe_book(
        self,
        exchange: str,
        category: str,
        symbol: str,
        channel: str,
        combined: bool,
        factory: Callable[[SimBook], BookStream],
    ) -> None: ...

    def unsubscribe(self, channel: str) -> None: ...

    def note_ping(self) -> None: ...

    def note_subscribes(self, accepted: int, rejected: int) -> None: ...

    def close(self, code: int, reason: str, after: float = 0.0) -> None: ...


_decode_request = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()


class OkxSession:
    """One client connection's OKX conversation."""

    def __init__(self, conn_id: str, host: OkxHost, rules: OkxRules, market: Market) -> None:
        self.conn_id = conn_id
        self.host = host
        self.rules = rules
        self.market = market
        self.topics: set[str] = set()
        self.closing = False

    def _event(self, body: dict[str, Any], req_id: Any) -> None:
        reply = {"id": req_id} if isinstance(req_id, str) and req_id else {}
        reply |= body
        reply["connId"] = self.conn_id
        self.host.send_control(_encode.encode(reply))

    def notice_upgrade(self, close_after: float) -> None:
        """The service-upgrade notice (64008), then the connection closes `close_after` s later."""
        msg = "The connection will soon be closed for a service upgrade. Please reconnect."
        self._event({"event": "notice", "code": "64008", "msg": msg}, None)
        self.closing = True
        self.host.close(1001, "service upgrade", close_after)

    def on_message(self, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        if raw == b"ping":
            self.host.note_ping()
            self.host.send_control(b"pong")
            return
        try:
            msg = _decode_request.decode(raw)
        except msgspec.DecodeError:
            self._event({"event": "error", "code": ERR_BAD_REQUEST, "msg": "Invalid request: not JSON"}, None)
            return
        req_id = msg.get("id") if isinstance(msg, dict) else None
        op = msg.get("op") if isinstance(msg, dict) else None
        args = msg.get("args") if isinstance(msg, dict) else None
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list) or not args:
            text = raw.decode(errors="replace")[:200]
            self._event(
                {"event": "error", "code": ERR_BAD_REQUEST, "msg": "Invalid request: " + text}, req_id
            )
            return
        for arg in args:
            if op == "subscribe":
                self._subscribe(arg, req_id)
            else:
                self._unsubscribe(arg, req_id)

    def _subscribe(self, arg: Any, req_id: Any) -> None:
        channel = arg.get("channel") if isinstance(arg, dict) else None
        if channel in MARKET_DATA_CHANNELS:
            self._subscribe_market_data(channel, arg, req_id)
            return
        inst = arg.get("instId") if isinstance(arg, dict) else None
        market = self.rules.instruments.get(inst) if isinstance(inst, str) else None
        topic = f"{channel}:{inst}"
        if channel not in ("trades", *BOOK_DEPTHS) or market is None or topic in self.rules.reject_topics:
            self.host.note_subscribes(0, 1)
            msg = f"Wrong URL or channel:{channel},instId:{inst} doesn't exist"
            self._event({"event": "error", "code": ERR_NOT_FOUND, "msg": msg}, req_id)
            return
        assert isinstance(inst, str) and isinstance(channel, str)
        self.host.note_subscribes(1, 0)
        self._event({"event": "subscribe", "arg": {"channel": channel, "instId": inst}}, req_id)
        if topic in self.topics:
            return
        self.topics.add(topic)
        if channel == "trades":
            self.host.subscribe_trades(EXCHANGE, market, inst, topic, lambda: TradeEncoder(inst))
            tape = self.market.tape(market, inst, EXCHANGE)
            latest = tape.history.latest(1)
            if latest:  # OKX pushes the latest trade at once, however old
                wire = ws_text_frame(TradeEncoder(inst).payload(latest))
                self.host.push_frames([WireFrame(wire, topic)])
        else:
            rules = self.rules
            self.host.subscribe_book(
                EXCHANGE, market, inst, topic, False, lambda book: OkxBookStream(channel, book, rules)
            )

    def _subscribe_market_data(self, channel: str, arg: dict[str, Any], req_id: Any) -> None:
        """`tickers`, `mark-price`, `funding-rate`, `open-interest` (by instId), `index-tickers` (by index)
        and `liquidation-orders` (by instType: every listed instrument of the type)."""
        listed = self.rules.instruments
        key = "instType" if channel == "liquidation-orders" else "instId"
        value = arg.get(key)
        targets: list[tuple[str, str]] = []  # (instrument whose book drives it, its market)
        if channel == "liquidation-orders":
            market = {v: k for k, v in OKX_INST_TYPES.items()}.get(value) if isinstance(value, str) else None
            if market in (SWAP, FUTURES):
                targets = [(i, m) for i, m in listed.items() if m == market]
        elif channel == "index-tickers":
            if isinstance(value, str) and any(index_of(i) == value and m != SPOT for i, m in listed.items()):
                swap = f"{value}-SWAP"
                targets = [(swap, SWAP)] if swap in listed else []
        elif isinstance(value, str) and value in listed:
            market = listed[value]
            if channel == "tickers" or (market != SPOT and (channel != "funding-rate" or market == SWAP)):
                targets = [(value, market)]
        topic = f"{channel}:{value}"
        if not targets or topic in self.rules.reject_topics:
            self.host.note_subscribes(0, 1)
            msg = f"Wrong URL or channel:{channel},{key}:{value} doesn't exist"
            self._event({"event": "error", "code": ERR_NOT_FOUND, "msg": msg}, req_id)
            return
        self.host.note_subscribes(1, 0)
        self._event({"event": "subscribe", "arg": {"channel": channel, key: value}}, req_id)
        if topic in self.topics:
            return
        self.topics.add(topic)
        rate, late = self.rules.book_rate, self.rules.out_of_order_every
        for inst, market in targets:
            if channel == "liquidation-orders":
                name = f"{topic}:{inst}"
                factory: Callable[[SimBook], BookStream] = functools.partial(
                    OkxLiquidationStream, inst, market
                )
            else:
                name = topic
                shown = value if isinstance(value, str) else inst
                factory = functools.partial(
                    OkxMarketDataStream, channel, shown, market, book_rate=rate, late=late
                )
            self.host.subscribe_book(EXCHANGE, market, inst, name, False, factory)

    def _unsubscribe(self, arg: Any, req_id: Any) -> None:
        channel = arg.get("channel") if isinstance(arg, dict) else None
        inst = arg.get("instId") if isinstance(arg, dict) else None
        topic = f"{channel}:{inst}"
        if topic in self.topics:
            self.topics.discard(topic)
            self.host.unsubscribe(topic)
        self._event({"event": "unsubscribe", "arg": {"channel": channel, "instId": inst}}, req_id)

    def malformed_frame(self, kind: MalformedKind, symbol: str, ts_ms: int) -> tuple[bytes, bool]:
        if kind is MalformedKind.NOT_JSON:
            return b"simulated garbage <not json> " + symbol.encode(), False
        if kind is MalformedKind.BINARY:
            return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xffsimulated binary frame", True
        trade: dict[str, Any] = {"instId": symbol, "tradeId": "1", "px": "1.0", "sz": "1", "side": "buy"}
        trade |= {"ts": str(ts_ms), "count": "1", "source": "0", "seqId": 1}
        channel = "trades"
        if kind is MalformedKind.UNKNOWN_TOPIC:
            channel = "sim-unknown"
        elif kind is MalformedKind.BAD_PRICE:
            trade["px"] = "abc"
        elif kind is MalformedKind.MISSING_SIDE:
            del trade["side"]
        payload = _encode.encode({"arg": {"channel": channel, "instId": symbol}, "data": [trade]})
        if kind is MalformedKind.TRUNCATED_JSON:
            payload = payload[: len(payload) // 2]
        return payload, False

    def on_control(self, ping: bool, payload: bytes) -> None:
        """Protocol pings are answered by the protocol."""

    async def run(self) -> None:
        """No per-connection timers beyond the server's idle watchdog."""


def conn_id_for(seed: int, number: int) -> str:
    return "%08x" % (stable_crc("okx:%d:%d" % (seed, number)))  # noqa: UP031


# -- REST ------------------------------------------------------------------------------------------------


class OkxRest:
    """OKX's REST routes on the simulator, each limited to 20 requests per 2 s."""

    def __init__(
        self,
        market: Market,
        book_source: Callable[[str, str, str], Any],
        rules: OkxRules,
    ) -> None:
        self.market = market
        self.book_source = book_source
        self.rules = rules
        self.requests = 0
        self.throttled = 0
        self._recent: dict[str, deque[float]] = {}

    def routes(self) -> dict[str, RestHandler]:
        return {
            "/api/v5/public/instruments": self._limited(self._instruments),
            "/api/v5/market/history-trades": self._limited(self._history_trades),
            "/api/v5/market/books": self._limited(self._books),
        }

    def _limited(self, handler: Callable[[HttpRequest], Any]) -> RestHandler:
        async def handle(request: HttpRequest) -> HttpResponse:
            self.requests += 1
            now = trio.current_time()
            recent = self._recent.setdefault(request.path, deque())
            while recent and recent[0] <= now - REST_WINDOW_S:
                recent.popleft()
            if len(recent) >= REST_LIMIT:
                self.throttled += 1
                return HttpResponse(
                    429, _encode.encode({"code": "50011", "msg": "Too Many Requests", "data": []})
                )
            recent.append(now)
            try:
                data = handler(request)
            except _ParamError as exc:
                return HttpResponse(400, _encode.encode({"code": exc.code, "msg": exc.msg, "data": []}))
            return HttpResponse(200, _encode.encode({"code": "0", "msg": "", "data": data}))

        return handle

    def _inst(self, request: HttpRequest) -> tuple[str, str]:
        values = request.query.get("instId")
        if not values:
            raise _ParamError("51000", "Parameter instId error")
        market = self.rules.instruments.get(values[0])
        if market is None:
            raise _ParamError("51001", "Instrument ID does not exist")
        return values[0], market

    def _instruments(self, request: HttpRequest) -> list[dict[str, str]]:
        kind = (request.query.get("instType") or [""])[0]
        wanted = {v: k for k, v in INST_TYPES.items()}.get(kind)
        if wanted is None:
            raise _ParamError("51000", "Parameter instType error")
        out = []
        for inst, market in self.rules.instruments.items():
            if market != wanted:
                continue
            spec = self.market.tape(market, inst, EXCHANGE).instrument
            row = {"instType": kind, "instId": inst, "state": "live"}
            row["tickSz"] = _decimal_text(spec.tick_decimals)
            row["lotSz"] = _decimal_text(spec.size_decimals)
            terms = contract(inst)
            if terms is None:
                row |= {"ctVal": "", "ctMult": "", "ctValCcy": "", "ctType": ""}
            else:
                row |= {"ctVal": terms[0], "ctMult": "1", "ctValCcy": terms[1], "ctType": terms[2]}
            out.append(row)
        return out

    def _history_trades(self, request: HttpRequest) -> list[dict[str, str]]:
        inst, market = self._inst(request)
        after_text = (request.query.get("after") or [""])[0]
        limit_text = (request.query.get("limit") or [str(HISTORY_MAX)])[0]
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= HISTORY_MAX:
            raise _ParamError("51000", "Parameter limit error")
        if after_text and not after_text.isdigit():
            raise _ParamError("51000", "Parameter after error")
        after = int(after_text) if after_text else None
        limit = int(limit_text)
        tape = self.market.tape(market, inst, EXCHANGE)
        out: list[dict[str, str]] = []
        for row in reversed(tape.history.rows()):
            if after is not None and row[ROW_SEQ] >= after:
                continue
            for trade_id, px, sz, side, ts in reversed(fills(row)):
                if after is not None and trade_id >= after:
                    continue
                out.append(
                    {
                        "instId": inst,
                        "side": side,
                        "sz": sz,
                        "px": px,
                        "tradeId": str(trade_id),
                        "ts": str(ts),
                    }
                )
                if len(out) >= limit:
                    return out
        return out

    def _books(self, request: HttpRequest) -> list[dict[str, Any]]:
        inst, market = self._inst(request)
        size_text = (request.query.get("sz") or ["1"])[0]
        if not size_text.isdigit() or not 1 <= int(size_text) <= 400:
            raise _ParamError("51000", "Parameter sz error")
        book = self.book_source(EXCHANGE, market, inst).book
        formats = Formats(book.instrument)
        bids, asks = book.top(int(size_text))
        return [
            {
                "asks": [[formats.price(p), formats.size(q), "0", "1"] for p, q in asks],
                "bids": [[formats.price(p), formats.size(q), "0", "1"] for p, q in bids],
                "ts": str(time.time_ns() // 1_000_000),
            }
        ]


class _ParamError(Exception):
    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


__all__ = [
    "EXCHANGE",
    "MARKETS",
    "WS_PATH",
    "OkxBookStream",
    "OkxRest",
    "OkxRules",
    "OkxSession",
    "TradeEncoder",
    "checksum_of",
    "conn_id_for",
    "contract",
    "fills",
    "instruments",
]
