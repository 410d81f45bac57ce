"""Binance's streams in the simulator: stream names, WebSocket paths, and what each stream sends.

Stream names (`<sym>@aggTrade`, `<sym>@trade`, `<sym>@depth[@Nms]`, market-data streams) are parsed into
`StreamSpec`s, request paths into `WsTarget`s; the encoders turn tape rows into aggTrade / trade frames
(raw or in the combined wrapper), `BinanceDepthStream` turns book updates into `depthUpdate` events, and
`malformed_payload` builds the broken frames of the fault switches. The control conversation (SUBSCRIBE,
limits, pings, lifetime) is `marketflow.sim.binance`, which re-exports these names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import msgspec

from marketflow.sim.book import BookTick, Crossing, SimBook
from marketflow.sim.faults import MalformedKind
from marketflow.sim.http import ws_text_frame
from marketflow.sim.market import (
    ROW_ID,
    ROW_LAST,
    ROW_PRICE,
    ROW_SEQ,
    ROW_SIDE,
    ROW_SIZE,
    ROW_T,
    Formats,
    FrameEncoder,
    FrameSink,
    TradeRow,
    WireFrame,
    channel_key,
    instrument_for,
)

EXCHANGE = "binance"
SPOT = "spot"
USDM = "usdm"
MARKETS: tuple[str, ...] = (SPOT, USDM)
USDM_PREFIX = "/usdm"
PUBLIC = "public"
MARKET_ROUTE = "market"
DEPTH_INTERVALS_MS: dict[str, dict[str, int]] = {
    SPOT: {"depth": 1000, "depth@100ms": 100},
    USDM: {"depth": 250, "depth@500ms": 500, "depth@100ms": 100},
}


@attrs.frozen
class StreamSpec:
    """One valid stream name, parsed."""

    name: str
    symbol: str  # upper-case native
    kind: str  # "aggTrade", "trade" or "depth"
    route: str  # USD-M routing class: "public" or "market"
    interval_ms: int = 0  # depth only


def parse_stream(market: str, name: str, symbols: frozenset[str]) -> StreamSpec | None:
    """`name` parsed for `market`, or None if the venue does not know it."""
    lower, at, kind = name.partition("@")
    symbol = lower.upper()
    if not at or lower != lower.lower() or symbol not in symbols:
        return None
    if kind in ("aggTrade", "trade"):
        return StreamSpec(name, symbol, kind, MARKET_ROUTE)
    if kind == "bookTicker":
        return StreamSpec(name, symbol, kind, PUBLIC)
    if kind == "ticker" or (market == USDM and kind in ("markPrice@1s", "forceOrder")):
        return StreamSpec(name, symbol, kind, MARKET_ROUTE)
    interval = DEPTH_INTERVALS_MS[market].get(kind)
    if interval is None:
        return None
    return StreamSpec(name, symbol, "depth", PUBLIC, interval)


@attrs.frozen
class WsTarget:
    """What a WebSocket request path asks for."""

    market: str
    route: str | None  # USD-M "public" / "market"; None = spot, or unrouted USD-M
    combined: bool
    streams: tuple[str, ...]


def parse_ws_target(path: str, query: dict[str, list[str]]) -> WsTarget | None:
    """The Binance endpoint at `path`, or None if `path` is not one."""
    market = SPOT
    route: str | None = None
    if path.startswith(USDM_PREFIX + "/"):
        market = USDM
        path = path[len(USDM_PREFIX) :]
        for name in (PUBLIC, MARKET_ROUTE):
            if path.startswith("/" + name + "/"):
                route = name
                path = path[len(name) + 1 :]
                break
    if path == "/ws":
        return WsTarget(market, route, False, ())
    if path.startswith("/ws/"):
        return WsTarget(market, route, False, tuple(path[4:].split("/")))
    if path == "/stream":
        streams = query.get("streams", [""])[0]
        return WsTarget(market, route, True, tuple(streams.split("/")) if streams else ())
    return None


def is_ws_path(path: str) -> bool:
    return parse_ws_target(path, {}) is not None


# -- frames ---------------------------------------------------------------------------------------------


def _wrapper(stream: str, combined: bool) -> tuple[str, str]:
    return ('{"stream":"' + stream + '","data":', "}") if combined else ("", "")


_MAKER = {"Sell": "true", "Buy": "false"}  # `m`: the buyer is the maker, so the taker sold


def _frames(template: str, values: Callable[[TradeRow, int], tuple[object, ...]]) -> FrameEncoder:
    return lambda rows, ts: b"".join([ws_text_frame((template % values(r, ts)).encode()) for r in rows])


def _agg_values(r: TradeRow, ts: int) -> tuple[object, ...]:
    """(E, a, p, q, f, l, T, m) of one aggTrade."""
    return (ts, r[ROW_ID], r[ROW_PRICE], r[ROW_SIZE], r[ROW_SEQ], r[ROW_LAST], r[ROW_T], _MAKER[r[ROW_SIDE]])


def _usdm_agg_values(r: TradeRow, ts: int) -> tuple[object, ...]:
    """(E, a, p, q, nq, f, l, T, m): `nq` (q without RPI fills) equals `q`, the simulator has no RPI."""
    values = _agg_values(r, ts)
    return (*values[:4], r[ROW_SIZE], *values[4:])


def agg_trade_encoder(market: str, symbol: str, stream: str, combined: bool) -> FrameEncoder:
    """One WebSocket frame per aggTrade (live key order; spot has `M`, USD-M has `nq` and no `M`)."""
    head, tail = _wrapper(stream, combined)
    if market == SPOT:
        fields = '","a":%s,"p":"%s","q":"%s","f":%d,"l":%d,"T":%d,"m":%s,"M":true}'
        return _frames(head + '{"e":"aggTrade","E":%d,"s":"' + symbol + fields + tail, _agg_values)
    fields = '","p":"%s","q":"%s","nq":"%s","f":%d,"l":%d,"T":%d,"m":%s}'
    return _frames(head + '{"e":"aggTrade","E":%d,"a":%s,"s":"' + symbol + fields + tail, _usdm_agg_values)


def split_fills(formats: Formats, row: TradeRow) -> list[tuple[int, str]]:
    """The individual trades (id, size) of one aggTrade: its size spread evenly over `f`..`l`."""
    first, last = row[ROW_SEQ], row[ROW_LAST]
    count = last - first + 1
    base, extra = divmod(formats.size_steps(row[ROW_SIZE]), count)
    return [(first + n, formats.size(base + (1 if n < extra else 0))) for n in range(count)]


def trade_encoder(market: str, symbol: str, stream: str, combined: bool) -> FrameEncoder:
    """One frame per individual trade; the fills of an aggTrade share its price, side and time."""
    head, tail = _wrapper(stream, combined)
    formats = Formats(instrument_for(market, symbol, EXCHANGE))
    spot = market == SPOT
    if spot:
        template = '{"e":"trade","E":%d,"s":"' + symbol + '","t":%d,"p":"%s","q":"%s","T":%d,"m":%s,"M":true}'
    else:  # the USD-M shape seen live; `X` and `st` copied as seen
        template = (
            '{"e":"trade","E":%d,"T":%d,"s":"'
            + symbol
            + '","t":%d,"p":"%s","q":"%s","X":"MARKET","m":%s,"st":1}'
        )
    template = head + template + tail

    def encode(rows: list[TradeRow], ts: int) -> bytes:
        frames = []
        for r in rows:
            price, t, maker = r[ROW_PRICE], r[ROW_T], _MAKER[r[ROW_SIDE]]
            for trade_id, size in split_fills(formats, r):
                values = (
                    (ts, trade_id, price, size, t, maker) if spot else (ts, t, trade_id, price, size, maker)
                )
                frames.append(ws_text_frame((template % values).encode()))
        return b"".join(frames)

    return encode


def _levels(formats: Formats, changes: dict[int, int], descending: bool) -> str:
    price = formats.price
    size = formats.size
    prices = formats.prices
    sizes = formats.sizes
    return ",".join(
        [
            '["' + (prices.get(p) or price(p)) + '","' + (sizes.get(q) or size(q)) + '"]'
            for p, q in sorted(changes.items(), reverse=descending)
        ]
    )


class BinanceDepthStream:
    """`<sym>@depth[@Nms]` on one book: the net changes of `every` book updates per `depthUpdate` event."""

    def __init__(self, market: str, spec: StreamSpec, every: int, book: SimBook) -> None:
        self.market = market
        self.name = spec.name
        self.every = max(1, every)
        self.book = book
        self.formats = Formats(book.instrument)
        self.skipped = 0
        self._sinks: dict[FrameSink, bool] = {}  # sink → wants the combined wrapper
        self._bids: dict[int, int] = {}
        self._asks: dict[int, int] = {}
        self._count = 0
        self._first_id = 0
        self._skip = False
        self._crossing = Crossing()
        self._cross_size = max(1, int(book.instrument.mean_size_steps))
        self._prev_u = book.last_id
        symbol = book.symbol
        if market == SPOT:
            self._head = '{"e":"depthUpdate","E":%d,"s":"' + symbol + '","U":%d,"u":%d,"b":['
        else:
            self._head = '{"e":"depthUpdate","E":%d,"T":%d,"s":"' + symbol + '","U":%d,"u":%d,"pu":%d,"b":['

    def active(self) -> bool:
        return bool(self._sinks)

    def sinks(self) -> list[FrameSink]:
        return list(self._sinks)

    def add_sink(self, sink: FrameSink, combined: bool) -> WireFrame | None:
        if not self._sinks:  # (re)activated: a fresh window from the next update
            self._count = 0
            self._prev_u = self.book.last_id
        self._sinks[sink] = combined
        return None

    def remove_sink(self, sink: FrameSink) -> None:
        self._sinks.pop(sink, None)

    def crossing_outstanding(self) -> bool:
        return self._crossing.outstanding

    def on_idle(self, ts_ms: int) -> None:
        """Binance sends nothing between updates."""

    def on_tick(self, tick: BookTick, ts_ms: int) -> None:
        if self._count == 0:
            self._first_id = tick.first_id
            self._bids = {}
            self._asks = {}
            self._skip = False
        self._bids.update(tick.bids)
        self._asks.update(tick.asks)
        self._skip = self._skip or tick.skip
        self._crossing.pending = self._crossing.pending or tick.cross
        self._count += 1
        if self._count < self.every:
            return
        self._count = 0
        first, last, prev = self._first_id, tick.last_id, self._prev_u
        self._prev_u = last
        if self._skip:  # generated, not sent: the next event's U / pu shows the gap
            self.skipped += 1
            return
        if self._crossing.outstanding:
            book = self.book
            self._crossing.apply(book.bids, book.best_ask(), self._cross_size, self._bids)
        if self.market == SPOT:
            head = self._head % (ts_ms, first, last)
        else:
            head = self._head % (ts_ms, ts_ms - 1, first, last, prev)
        payload = (
            head
            + _levels(self.formats, self._bids, True)
            + '],"a":['
            + _levels(self.formats, self._asks, False)
            + "]}"
        )
        raw: list[WireFrame] | None = None
        combined: list[WireFrame] | None = None
        for sink, wrapped in self._sinks.items():
            if wrapped:
                if combined is None:
                    text = '{"stream":"' + self.name + '","data":' + payload + "}"
                    combined = [WireFrame(ws_text_frame(text.encode()), channel_key(self.name, True))]
                sink.push_frames(combined)
            else:
                if raw is None:
                    raw = [WireFrame(ws_text_frame(payload.encode()), self.name)]
                sink.push_frames(raw)


def malformed_payload(
    kind: MalformedKind, market: str, symbol: str, ts_ms: int, stream: str | None
) -> tuple[bytes, bool]:
    """A broken aggTrade-like frame of `kind` (wrapped when `stream` names a combined stream)."""
    if kind is MalformedKind.NOT_JSON:
        return b"simulated garbage <not json> " + symbol.encode(), False
    if kind is MalformedKind.BINARY:
        return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xffsimulated binary frame", True
    event: dict[str, Any]
    if kind is MalformedKind.UNKNOWN_TOPIC:
        event = {"e": "simUnknown", "E": ts_ms, "s": symbol}
    else:
        event = {"e": "aggTrade", "E": ts_ms, "s": symbol, "a": 0, "p": "1.0", "q": "1.0"}
        event |= {"f": 0, "l": 0, "T": ts_ms, "m": False}
        if market == SPOT:
            event["M"] = True
        if kind is MalformedKind.BAD_PRICE:
            event["p"] = "abc"
        elif kind is MalformedKind.MISSING_SIDE:
            del event["m"]
    frame: Any = event if stream is None else {"stream": stream, "data": event}
    payload = msgspec.json.encode(frame)
    if kind is MalformedKind.TRUNCATED_JSON:
        payload = payload[: len(payload) // 2]
    return payload, False


__all__ = [
    "DEPTH_INTERVALS_MS",
    "EXCHANGE",
    "MARKETS",
    "MARKET_ROUTE",
    "PUBLIC",
    "SPOT",
    "USDM",
    "USDM_PREFIX",
    "BinanceDepthStream",
    "StreamSpec",
    "WsTarget",
    "agg_trade_encoder",
    "is_ws_path",
    "malformed_payload",
    "parse_stream",
    "parse_ws_target",
    "split_fills",
    "trade_encoder",
]
