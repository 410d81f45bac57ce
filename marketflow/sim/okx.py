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

The book streams live in `marketflow.sim.okx_book`, the REST routes in `marketflow.sim.okx_rest`; their
public names are re-exported here. The sessions stay in this module: `SimServer.drop_connections` knows a
venue's sessions by their module's name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from marketflow.model import SymbolError, split_native
from marketflow.sim.book import BookStream, SimBook
from marketflow.sim.derivs import OKX_INST_TYPES, OkxLiquidationStream, OkxMarketDataStream
from marketflow.sim.faults import MalformedKind
from marketflow.sim.host import StreamHost
from marketflow.sim.http import ws_text_frame
from marketflow.sim.market import (
    ROW_LAST,
    ROW_PRICE,
    ROW_SEQ,
    ROW_SIDE,
    ROW_SIZE,
    ROW_T,
    Market,
    TradeRow,
    WireFrame,
    stable_crc,
)
from marketflow.sim.okx_book import (
    BOOK_DEPTHS,
    CHECKSUM_LEVELS,
    KEEPALIVE_S,
    RESET_SEQ,
    SEQ_BASE,
    OkxBookStream,
    OkxRules,
    checksum_of,
)

EXCHANGE = "okx"
WS_PATH = "/ws/v5/public"
SPOT = "spot"
SWAP = "swap"
FUTURES = "futures"
MARKETS: tuple[str, ...] = (SPOT, SWAP, FUTURES)
FUTURES_EXPIRY = "270625"
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


class OkxHost(StreamHost, Protocol):
    """What an OKX session needs from its connection, beyond `StreamHost`."""

    def push_frames(self, frames: list[WireFrame]) -> None: ...

    def note_ping(self) -> None: ...

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


# Last: `okx_rest` builds on the names above.
from marketflow.sim.okx_rest import HISTORY_MAX, REST_LIMIT, REST_WINDOW_S, OkxRest  # noqa: E402

__all__ = [
    "BOOK_DEPTHS",
    "CHECKSUM_LEVELS",
    "EXCHANGE",
    "HISTORY_MAX",
    "KEEPALIVE_S",
    "MARKETS",
    "RESET_SEQ",
    "REST_LIMIT",
    "REST_WINDOW_S",
    "SEQ_BASE",
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
