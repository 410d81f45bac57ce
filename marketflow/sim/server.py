"""The simulator's server: one TCP port, HTTP/1.1 routed by path, WebSocket upgrades on venue WS paths.

The request head is read by `marketflow.sim.http` (so REST and WebSocket share the port); a WebSocket
upgrade on a known path is handed to the `websockets` Sans-I/O `ServerProtocol`, which then parses client
frames, answers protocol pings and runs the close handshake. Market-data frames are framed once per
published frame (server frames are unmasked and no extension is negotiated, so their bytes are the same
for every subscriber) and each connection writes a whole queue of them with one `send_all`.
"""

from __future__ import annotations

import errno
import functools
import logging
import ssl
import time
from collections.abc import Callable

import trio
from websockets.http11 import Request
from websockets.server import ServerProtocol

from marketflow.sim import binance, bybit, coinbase, kraken, okx
from marketflow.sim.book import BookFeed, SimBook
from marketflow.sim.config import MARKETS, SimConfig, SimStatistics
from marketflow.sim.faults import StallGate, run_scheduled_faults
from marketflow.sim.http import (
    Counters,
    HttpRequest,
    HttpResponse,
    Incoming,
    RestHandler,
    Session,
    WsConnection,
    serve_http,
)
from marketflow.sim.market import (
    Formats,
    Market,
    SimTrade,
    TapeFrame,
    TradeFeed,
    instrument_for,
    row_to_sim_trade,
    to_sim_trades,
)
from marketflow.sim.rest import RestApi

log = logging.getLogger("marketflow.sim")
_protocol_log = logging.getLogger("marketflow.sim.websocket")  # websockets logs every open/close at INFO

RECEIVE_SIZE = 64 * 1024
MAX_CLIENT_MESSAGE = 1024 * 1024
MAX_BACKLOG_FRAMES = 100_000  # a client this far behind is cut off, as a real venue would
CLOSE_GRACE_S = 2.0
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_CLIENT_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError)


SessionFactory = Callable[[WsConnection], Session]


class SimServer:
    """An offline exchange: Bybit v5 and Binance spot / USD-M public streams and REST on one port.

    `nursery.start(server.run)` binds and returns once the port is known; the server runs until cancelled.
    """

    def __init__(self, config: SimConfig, ssl_context: ssl.SSLContext | None = None) -> None:
        self.config = config
        self.ssl_context = ssl_context
        self.host = "127.0.0.1" if config.host in ("", "0.0.0.0", "::") else config.host
        self.port = config.port
        self.market = Market(config.seed, history=config.trade_history)
        symbols = frozenset(config.symbols)
        self.rest = RestApi(self.market, self.book_feed, symbols)
        self.rest_routes: dict[str, RestHandler] = self.rest.routes()
        self._rules = bybit.BybitRules(
            symbols=symbols,
            reject_topics=frozenset(config.faults.reject_topics),
            slow_pong_s=config.faults.slow_pong_s,
            out_of_order_every=config.faults.out_of_order_every,
        )
        self._binance_rules = {
            market: binance.BinanceRules(
                market,
                symbols,
                config.binance_ping_interval_s or binance.PING_INTERVAL_S[market],
                config.binance_pong_timeout_s or binance.PONG_TIMEOUT_S[market],
                config.binance_max_lifetime_s,
                config.book_rate,
                frozenset(config.faults.reject_topics),
                config.faults.out_of_order_every,
            )
            for market in binance.MARKETS
        }
        self._coinbase_rules = coinbase.CoinbaseRules(
            coinbase.products(config.symbols),
            config.coinbase_quiet,
            frozenset(config.faults.reject_topics),
            config.seed,
        )
        self.coinbase_rest = coinbase.CoinbaseRest(self.market, self._coinbase_rules)
        self.rest_routes.update(self.coinbase_rest.routes())
        self._okx_rules = okx.OkxRules(
            okx.instruments(symbols),
            frozenset(config.faults.reject_topics),
            config.okx_zero_checksum,
            config.okx_legacy_books,
            config.okx_keepalive_s,
            config.book_rate,
            config.faults.out_of_order_every,
            config.okx_no_book_snapshot,
        )
        self.okx_rest = okx.OkxRest(self.market, self.book_feed, self._okx_rules)
        self.rest_routes.update(self.okx_rest.routes())
        self.kraken = kraken.KrakenSim(
            self.market,
            config.symbols,
            self.book_feed,
            quiet=config.kraken_quiet,
            reject_topics=frozenset(config.faults.reject_topics),
            heartbeat_s=config.kraken_heartbeat_s,
        )
        self.rest_routes.update(self.kraken.rest.routes())
        self._feeds: dict[tuple[str, str, str], TradeFeed] = {}
        self._books: dict[tuple[str, str, str], BookFeed] = {}
        self._connections: set[WsConnection] = set()
        self._delivered: list[TapeFrame] = []
        self.stall_gate = StallGate()
        self.counters = Counters()
        self.idle_timeout_s = config.idle_timeout_s
        self.malformed_every = config.faults.malformed_every
        self._nursery: trio.Nursery | None = None

    # -- addresses -----------------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def _ws_root(self) -> str:
        scheme = "wss" if self.ssl_context is not None else "ws"
        return f"{scheme}://{self.host}:{self.port}"

    def bybit_ws_url(self, category: str) -> str:
        """The full stream URL of a Bybit category, e.g. `ws://127.0.0.1:PORT/v5/public/spot`."""
        if category not in bybit.CATEGORIES:
            raise ValueError(f"unknown Bybit category {category!r}; expected one of {bybit.CATEGORIES}")
        return self._ws_root() + bybit.ws_path(category)

    def binance_ws_base(self, market: str) -> str:
        """The WebSocket base of a Binance market: `ws://HOST:PORT` (spot) or `ws://HOST:PORT/usdm`."""
        self._check("binance", market)
        return self._ws_root() + ("" if market == binance.SPOT else binance.USDM_PREFIX)

    def binance_rest_base(self, market: str) -> str:
        """The REST base of a Binance market (both on the root: `/api/v3/…` and `/fapi/v1/…`)."""
        self._check("binance", market)
        return self.http_url

    def coinbase_ws_url(self) -> str:
        """Coinbase's market-data socket on the simulator, `ws://HOST:PORT/coinbase/ws`."""
        return self._ws_root() + coinbase.WS_PATH

    def okx_ws_url(self) -> str:
        """OKX's public stream URL on the simulator, `ws://HOST:PORT/ws/v5/public` (every market)."""
        return self._ws_root() + okx.WS_PATH

    def urls(self, exchange: str, market: str) -> tuple[str, str]:
        """`(ws_url, rest_url)` a feed of this exchange market sets to use the simulator (demo, tests)."""
        self._check(exchange, market)
        if exchange == "bybit":
            return self.bybit_ws_url(market), self.http_url
        if exchange == okx.EXCHANGE:
            return self.okx_ws_url(), self.http_url
        if exchange == coinbase.EXCHANGE:
            return self.coinbase_ws_url(), self.http_url
        if exchange == kraken.EXCHANGE:
            return self._ws_root() + kraken.WS_PATH, self.http_url
        return self.binance_ws_base(market), self.binance_rest_base(market)

    def listed(self, exchange: str, market: str) -> tuple[str, ...]:
        """The native symbols the simulator lists on an exchange market (OKX: its instIds there;
        Coinbase: its products)."""
        self._check(exchange, market)
        if exchange == okx.EXCHANGE:
            return tuple(i for i, m in self._okx_rules.instruments.items() if m == market)
        if exchange == coinbase.EXCHANGE:
            return coinbase.products(self.config.symbols)
        if exchange == kraken.EXCHANGE:
            return self.kraken.listed
        return self.config.symbols

    def add_rest_route(self, path: str, handler: RestHandler) -> None:
        """Answer HTTP requests on `path` (any method, query ignored for routing) with `handler`."""
        self.rest_routes[path] = handler

    # -- ground truth, statistics --------------------------------------------------------------------

    def _check(self, exchange: str, market: str, symbol: str | None = None) -> None:
        if market not in MARKETS.get(exchange, ()):
            raise ValueError(f"unknown exchange/market {exchange!r}/{market!r}; expected one of {MARKETS}")
        if exchange == kraken.EXCHANGE:
            if symbol is not None and symbol not in self.kraken.listed:
                raise ValueError(f"{symbol!r} is not listed; kraken lists {self.kraken.listed}")
        elif exchange == okx.EXCHANGE:
            if symbol is not None and symbol not in self._okx_rules.instruments:
                raise ValueError(f"{symbol!r} is not listed; okx lists {sorted(self._okx_rules.instruments)}")
        elif exchange == coinbase.EXCHANGE:
            if symbol is not None and symbol not in self._coinbase_rules.products:
                listed = sorted(self._coinbase_rules.products)
                raise ValueError(f"{symbol!r} is not listed; coinbase lists {listed}")
        elif symbol is not None and symbol not in self.config.symbols:
            raise ValueError(f"{symbol!r} is not listed; the simulator lists {self.config.symbols}")

    def delivered_trades(self, category: str | None = None, *, exchange: str | None = None) -> list[SimTrade]:
        """Every trade written to at least one client socket, in generation order, once each.

        `category` is the market (`spot` matches both exchanges' spot unless `exchange` is given too).
        """
        if not self.config.record_delivered:
            raise RuntimeError("delivered trades are not kept: SimConfig.record_delivered is False")
        return to_sim_trades(self._delivered, category, exchange)

    def generated_trades(self, exchange: str, market: str, symbol: str) -> list[SimTrade]:
        """The tape's trades, delivered or not (at least the last `SimConfig.trade_history`), oldest first."""
        self._check(exchange, market, symbol)
        tape = self.market.find_tape(exchange, market, symbol)
        if tape is None:
            return []
        return [row_to_sim_trade(exchange, market, symbol, row) for row in tape.history.rows()]

    def generated_count(self) -> int:
        """Trades generated so far, delivered or not."""
        return self.market.trades_generated

    def book(self, exchange: str, market: str, symbol: str) -> SimBook:
        """The simulated book of (exchange, market, symbol), created in its initial state if new."""
        return self.book_feed(exchange, market, symbol).book

    def true_book(
        self, exchange: str, market: str, symbol: str, depth: int
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]], int]:
        """The book's top `depth` levels now, as the venue formats them, and its update id.

        The id is Binance's `lastUpdateId`, or for Bybit the `seq` of the latest update.
        """
        self._check(exchange, market, symbol)
        book = self.book(exchange, market, symbol)
        formats = Formats(book.instrument)
        bids, asks = book.top(depth)
        return (
            [(formats.price(p), formats.size(q)) for p, q in bids],
            [(formats.price(p), formats.size(q)) for p, q in asks],
            book.last_id,
        )

    @property
    def connections(self) -> int:
        return len(self._connections)

    def statistics(self) -> SimStatistics:
        c = self.counters
        return SimStatistics(
            connections=len(self._connections),
            connections_total=c.connections_total,
            frames_sent=c.frames_sent,
            trades_sent=c.trades_sent,
            subscribes=c.subscribes,
            rejected_subscribes=c.rejected_subscribes,
            pings=c.pings,
            malformed_sent=c.malformed_sent,
            drops=c.drops,
            book_frames_sent=c.book_frames_sent,
            pings_sent=c.pings_sent,
            rate_limited=c.rate_limited,
            rest_requests=self.rest.requests
            + self.okx_rest.requests
            + self.coinbase_rest.requests
            + self.kraken.rest.requests,
            rest_throttled=self.rest.throttled
            + self.okx_rest.throttled
            + self.coinbase_rest.throttled
            + self.kraken.rest.throttled,
        )

    # -- runtime faults ------------------------------------------------------------------------------

    def drop_connections(self, exchange: str | None = None) -> int:
        """Abort every client connection's TCP (or only `exchange`'s) without a WebSocket close frame;
        return how many."""
        dropped = 0
        for conn in list(self._connections):
            session = getattr(conn, "session", None)
            if exchange is not None and type(session).__module__.rsplit(".", 1)[-1] != exchange:
                continue  # each venue's sessions live in the module named after it (sim/okx.py, ...)
            if conn.abort():
                dropped += 1
        self.counters.drops += dropped
        return dropped

    def stall(self, seconds: float) -> None:
        """Every connection sends nothing (no data, no pongs) for `seconds`; queued frames follow after."""
        self.stall_gate.stall(seconds)

    def inject_malformed(self, count: int = 1) -> None:
        """Each current connection follows its next data frame with `count` malformed frames."""
        for conn in self._connections:
            conn.malformed.inject(count)

    def skip_update(self, exchange: str, market: str, symbol: str) -> None:
        """The book's next update is generated but not sent on any of its streams (a sequence gap)."""
        self._check(exchange, market, symbol)
        self.book(exchange, market, symbol).skip_next += 1

    def cross_book(self, exchange: str, market: str, symbol: str) -> None:
        """Every stream of the book sends one message that crosses it (a bid above the best ask) and
        repairs it in its next message. Only the wire shows it: snapshots and `true_book` stay sane."""
        self._check(exchange, market, symbol)
        self.book(exchange, market, symbol).cross_next = True

    def stale_snapshot(self, exchange: str, market: str, symbol: str, updates_back: int = 5) -> None:
        """The next REST depth snapshot of the book is the book as it was `updates_back` updates ago."""
        self._check(exchange, market, symbol)
        self.book(exchange, market, symbol).stale_next = max(1, updates_back)

    def bybit_restart(self, market: str, symbol: str) -> None:
        """Every Bybit depth stream of the book next sends a snapshot with `u` = 1, then deltas from 2."""
        self._check("bybit", market, symbol)
        self.book("bybit", market, symbol).restart_next = True

    def server_shutdown(self, close_after_s: float = 0.5) -> int:
        """Send `serverShutdown` to every Binance connection, close them `close_after_s` later; how many."""
        ts_ms = time.time_ns() // 1_000_000
        told = 0
        for conn in list(self._connections):
            if isinstance(conn.session, binance.BinanceSession) and not conn.session.closing:
                conn.session.server_shutdown(ts_ms, close_after_s)
                told += 1
        return told

    def okx_bad_checksum(self, market: str, inst: str) -> None:
        """The next message of the instrument's OKX `books` stream carries a wrong checksum."""
        self._check(okx.EXCHANGE, market, inst)
        for stream in self.book_feed(okx.EXCHANGE, market, inst).streams.values():
            if isinstance(stream, okx.OkxBookStream):
                stream.bad_checksum_next = True

    def okx_keepalive(self, market: str, inst: str) -> None:
        """The instrument's OKX `books` stream sends a keep-alive at its next idle check."""
        self._check(okx.EXCHANGE, market, inst)
        for stream in self.book_feed(okx.EXCHANGE, market, inst).streams.values():
            if isinstance(stream, okx.OkxBookStream):
                stream.keepalive_next = True

    def okx_reset(self, market: str, inst: str) -> None:
        """The instrument's next OKX book message resets `seqId` below `prevSeqId` (after maintenance)."""
        self._check(okx.EXCHANGE, market, inst)
        self.book(okx.EXCHANGE, market, inst).restart_next = True

    def okx_notice(self, close_after_s: float = 0.5) -> int:
        """Send the 64008 upgrade notice to every OKX connection, close them later; how many."""
        told = 0
        for conn in list(self._connections):
            if isinstance(conn.session, okx.OkxSession) and not conn.session.closing:
                conn.session.notice_upgrade(close_after_s)
                told += 1
        return told

    def coinbase_lose_trades(self, product: str, messages: int = 1) -> None:
        """The product's next `messages` `market_trades` messages are lost on every connection (their
        sequence numbers are used, their trades never sent: a trade-id gap for REST to fill)."""
        self._check(coinbase.EXCHANGE, coinbase.SPOT, product)
        self._coinbase_rules.lose_trades[product] = messages

    def coinbase_sequence_jump(self, count: int = 3) -> int:
        """Every Coinbase connection's next message skips `count` sequence numbers; how many."""
        told = 0
        for conn in list(self._connections):
            if isinstance(conn.session, coinbase.CoinbaseSession):
                conn.session.sequence_jump(count)
                told += 1
        return told

    # -- serving -------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        self.port = listeners[0].socket.getsockname()[1]
        for extra in listeners[1:]:
            if extra.socket.getsockname()[1] != self.port:  # port 0 on a dual-stack name: keep one port
                listeners.remove(extra)
                await extra.aclose()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            faults = self.config.faults
            if faults.drop_every_s is not None or faults.stall_every_s is not None:
                nursery.start_soon(
                    functools.partial(
                        run_scheduled_faults, faults, drop=self.drop_connections, stall=self.stall
                    )
                )
            log.info("simulator listening on %s", self.http_url)
            task_status.started()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _ACCEPT_RETRY_ERRNOS:
                        raise
                    log.warning("simulator: accept failed (%s); retrying shortly", exc)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(self._handle_stream, stream)

    async def _handle_stream(self, tcp: trio.SocketStream) -> None:
        stream: trio.abc.Stream = tcp
        if self.ssl_context is not None:
            stream = trio.SSLStream(tcp, self.ssl_context, server_side=True, https_compatible=True)
        try:
            await serve_http(
                stream,
                is_websocket=self._is_websocket,
                rest_route=self.rest_routes.get,
                serve_websocket=self._serve_websocket,
            )
        except* _CLIENT_GONE as group:
            log.debug("simulator: client went away: %r", group.exceptions[0])
        except* Exception:
            log.exception("simulator: connection failed; dropping it")
        finally:
            await trio.aclose_forcefully(stream)

    @staticmethod
    def _is_websocket(path: str) -> bool:
        return (
            path in bybit.WS_PATHS
            or path in (okx.WS_PATH, coinbase.WS_PATH, kraken.WS_PATH)
            or binance.is_ws_path(path)
        )

    def _ws_route(self, http: HttpRequest) -> SessionFactory | HttpResponse:
        """The session for a WebSocket request, or the refusal of its handshake."""
        category = bybit.WS_PATHS.get(http.path)
        if category is not None:
            rules = self._rules

            def open_bybit(conn: WsConnection) -> Session:
                return bybit.BybitSession(
                    category, bybit.conn_id_for(self.config.seed, conn.number), conn, rules
                )

            return open_bybit
        if http.path == coinbase.WS_PATH:
            coinbase_rules = self._coinbase_rules

            def open_coinbase(conn: WsConnection) -> Session:
                return coinbase.CoinbaseSession(
                    conn.number, conn, coinbase_rules, self.market, self.book_feed
                )

            return open_coinbase
        if http.path == okx.WS_PATH:
            okx_rules = self._okx_rules

            def open_okx(conn: WsConnection) -> Session:
                conn_id = okx.conn_id_for(self.config.seed, conn.number)
                return okx.OkxSession(conn_id, conn, okx_rules, self.market)

            return open_okx
        if http.path == kraken.WS_PATH:
            return lambda conn: self.kraken.session(conn.number, conn)
        target = binance.parse_ws_target(http.path, http.query)
        if target is None:
            return HttpResponse(404, b"not found")
        rules_ = self._binance_rules[target.market]
        specs = binance.validate_streams(rules_, target.streams)
        if specs is None or len(target.streams) > binance.MAX_STREAMS:
            return HttpResponse(400, b'{"code":2,"msg":"Invalid request: invalid stream"}')

        def open_binance(conn: WsConnection) -> Session:
            session = binance.BinanceSession(rules_, target, conn)
            session.open(specs)
            return session

        return open_binance

    async def _serve_websocket(self, stream: trio.abc.Stream, raw: bytes, request: Incoming) -> None:
        route = self._ws_route(request.http)
        proto = ServerProtocol(max_size=MAX_CLIENT_MESSAGE, logger=_protocol_log)
        proto.receive_data(raw)
        events = proto.events_received()
        if not events or not isinstance(events[0], Request):
            out = b"".join(proto.data_to_send())
            if out:
                await stream.send_all(out)
            return
        if isinstance(route, HttpResponse):
            response = proto.reject(route.status, route.body.decode())
        else:
            response = proto.accept(events[0])
        proto.send_response(response)
        handshake = proto.data_to_send()
        await stream.send_all(b"".join(handshake))
        if response.status_code != 101 or b"" in handshake or isinstance(route, HttpResponse):
            return  # refused, or failed already (a bad frame came right behind the request)
        self.counters.connections_total += 1
        conn = WsConnection(self, stream, proto, self.counters.connections_total)
        self._connections.add(conn)
        try:
            conn.session = route(conn)
            await conn.run(events[1:])
        finally:
            self._connections.discard(conn)
            conn.detach()

    # -- feeds ---------------------------------------------------------------------------------------

    def _trades_per_frame(self, exchange: str, category: str) -> tuple[int, int]:
        if exchange == binance.EXCHANGE:
            return self.config.binance_trades_per_frame
        if exchange == coinbase.EXCHANGE:
            return (1, 6)  # trades batched over 250 ms (§9.4)
        if exchange == okx.EXCHANGE:
            return (1, 1)  # one message per taker order
        if category == bybit.SPOT:
            return self.config.spot_trades_per_frame
        return self.config.linear_trades_per_frame

    def trade_feed(self, exchange: str, category: str, symbol: str) -> TradeFeed:
        key = (exchange, category, symbol)
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = TradeFeed(
                self.market,
                self.market.tape(category, symbol, exchange),
                rate=self.config.rate,
                trades_per_frame=self._trades_per_frame(exchange, category),
                max_frames=self.config.max_frames,
                keep_running=self.config.trade_while_unsubscribed,
            )
        return feed

    def book_feed(self, exchange: str, category: str, symbol: str) -> BookFeed:
        key = (exchange, category, symbol)
        feed = self._books.get(key)
        if feed is None:
            book = SimBook(
                self.config.seed,
                exchange,
                category,
                instrument_for(category, symbol, exchange),
                levels=self.config.book_levels,
                skip_every=self.config.faults.skip_every_n_updates,
            )
            feed = self._books[key] = BookFeed(
                book, rate=self.config.book_rate, keep_running=self.config.trade_while_unsubscribed
            )
        return feed

    def start_feed(self, feed: TradeFeed | BookFeed) -> None:
        if not feed.running and self._nursery is not None:
            if isinstance(feed, TradeFeed) and feed.exhausted:
                return
            feed.running = True  # before the task starts, so a second subscriber does not start another
            self._nursery.start_soon(feed.run)

    def note_sent(self, frames: list[TapeFrame]) -> None:
        counters = self.counters
        counters.frames_sent += len(frames)
        record = self.config.record_delivered
        trades = 0
        for frame in frames:
            trades += len(frame.trades)
            origin = frame.origin or frame
            if not origin.delivered:
                origin.delivered = True
                if record:
                    self._delivered.append(origin)
        counters.trades_sent += trades


__all__ = [
    "MARKETS",
    "SimConfig",
    "SimServer",
    "SimStatistics",
]
