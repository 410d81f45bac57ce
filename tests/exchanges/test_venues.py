"""The venue contract (marketflow/exchanges/base.py), checked the same way over every venue in `VENUES`.

Adding a venue adds parameters here, nothing else: the pure checks run over every (venue, market); the
live checks run every market the simulator speaks through the real feed actor, the venue's decoder, its
book synchronizer and its REST recovery.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import pytest
import trio

from marketflow.config import DEFAULT_FEEDS, ConfigError, FeedConfig, parse_config
from marketflow.exchanges import VENUES, venue
from marketflow.exchanges.base import (
    BookRecovery,
    ConnectionPlan,
    Decoded,
    Fetch,
    FrameDecoder,
    ReconnectTrades,
    RestRequest,
    Topic,
    TradeGap,
    UnknownControl,
    Venue,
)
from marketflow.exchanges.orderbook import BookState, Synchronizer
from marketflow.model import BookUpdate, RawFrames, SymbolError, Trade
from marketflow.pipeline.feed import Feed, FeedCounters
from marketflow.pipeline.rest import RestClient, WeightBudget
from marketflow.runtime.bus import Bus, receive_batches
from marketflow.sim import SimConfig, SimServer
from marketflow.sim.server import MARKETS as SIM_MARKETS

MARKETS = [(name, market) for name, v in VENUES.items() for market in v.markets]
SIMULATED = [(name, market) for name, market in MARKETS if market in SIM_MARKETS.get(name, ())]


def ids(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"{name}-{market}" for name, market in pairs]


@pytest.mark.parametrize("name", sorted(VENUES))
def test_registered_under_its_own_name(name: str) -> None:
    v = VENUES[name]
    assert v.name == name == name.lower()
    assert v.markets and all(key == m.name for key, m in v.markets.items())


def test_unknown_venue_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="unknown exchange 'nowhere'; known: \\["):
        venue("nowhere")


@pytest.mark.parametrize("name", sorted(VENUES))
def test_unknown_market_is_refused_by_name(name: str) -> None:
    v = VENUES[name]
    for call in (
        lambda: v.ws_url("nowhere"),
        lambda: v.rest_url("nowhere"),
        lambda: v.trade_recovery("nowhere"),
        lambda: v.rest_budget("nowhere"),
        lambda: v.normalize_symbol("nowhere", "BTCUSDT"),
    ):
        with pytest.raises(ValueError, match="nowhere"):
            call()


@pytest.mark.parametrize(("name", "market"), MARKETS, ids=ids(MARKETS))
def test_market_record_and_symbols_both_ways(name: str, market: str) -> None:
    v = VENUES[name]
    m = v.markets[market]
    if m.full_book:  # the whole book, no depth to choose
        assert (m.book_depths, m.default_book_depth) == ((), 0)
    else:
        assert m.default_book_depth in m.book_depths
    assert v.normalize_symbol(market, m.native_example) == m.normalized_example
    assert v.normalize_symbol(market, m.normalized_example) == m.normalized_example
    assert v.normalize_symbol(market, m.normalized_example.lower()) == m.normalized_example
    assert v.native_symbol(market, m.normalized_example) == m.native_example
    assert m.normalized_example.endswith("-PERP") == (m.perpetual and m.normalized_example.count("-") == 2)
    for symbol in m.default_symbols:
        assert v.normalize_symbol(market, v.native_symbol(market, symbol)) == symbol
    for bad in ("", "   ", "BTC!USDT"):
        with pytest.raises(SymbolError):
            v.normalize_symbol(market, bad)


# Look-alikes of each venue's example symbols: a letter swapped for a Cyrillic or fullwidth twin, a long s
# that `str.upper` turns into "S", a no-break space that `str.strip` drops.
LOOK_ALIKES = {
    "\u0412": "CYRILLIC CAPITAL LETTER VE",  # В for B
    "\uff34": "FULLWIDTH LATIN CAPITAL LETTER T",  # Ｔ for T
    "\u017f": "LATIN SMALL LETTER LONG S",  # ſ for S
    "\u00a0": "NO-BREAK SPACE",
}


def look_alikes(symbol: str) -> list[tuple[str, str]]:
    """(the symbol with one look-alike in it, the character's code and name as an error names them)."""
    out = []
    for char, name in LOOK_ALIKES.items():
        twin = {"\u0412": "B", "\uff34": "T", "\u017f": "S"}.get(char)
        text = char + symbol if twin is None else symbol.replace(twin, char, 1)
        assert text != symbol, (symbol, name)  # every example holds a B, a T and an S
        out.append((text, f"U+{ord(char):04X} ({name})"))
    return out


@pytest.mark.parametrize(("name", "market"), MARKETS, ids=ids(MARKETS))
def test_look_alike_symbols_are_refused_naming_the_character(name: str, market: str) -> None:
    """Every venue's own parser refuses non-ASCII (not only config and the API in front of it): OKX read
    'ВTC-USDT' as a symbol, and every venue read 'BTC-UſDT' as BTC-USDT."""
    v = VENUES[name]
    m = v.markets[market]
    for example in (m.native_example, m.normalized_example):
        for text, named in look_alikes(example):
            with pytest.raises(SymbolError) as refused:
                v.normalize_symbol(market, text)
            assert named in str(refused.value) and "ASCII" in str(refused.value), (text, refused.value)
    for text, named in look_alikes(m.normalized_example):
        with pytest.raises(SymbolError, match=re.escape(named)):
            v.native_symbol(market, text)


@pytest.mark.parametrize(("name", "market"), MARKETS, ids=ids(MARKETS))
def test_topics_both_ways_and_connection_plans(name: str, market: str) -> None:
    v = VENUES[name]
    m = v.markets[market]
    natives = [v.native_symbol(market, s) for s in (m.normalized_example, *m.default_symbols)]
    natives = list(dict.fromkeys(natives))
    depth = m.default_book_depth
    for native in natives:
        for channel in ("trades", "book"):
            assert v.parse_topic(market, v.topic(market, channel, native, depth)) == Topic(channel, native)
    assert v.parse_topic(market, "no such topic") is None
    assert v.ws_url(market).startswith("wss://") and v.rest_url(market).startswith("https://")
    assert v.ws_url(market, "ws://127.0.0.1:9/x").startswith("ws://127.0.0.1:9")
    assert v.rest_url(market, "http://127.0.0.1:9/") == "http://127.0.0.1:9"
    plans = v.connections(market, natives, ("trades", "book"), depth, None)
    assert {n for p in plans for n in p.natives} == set(natives)
    assert {c for p in plans for c in p.channels} == {"trades", "book"}
    assert len({p.suffix for p in plans}) == len(plans)
    topics = [t for p in plans for t in p.topics]
    assert sorted(topics) == sorted(
        v.topic(market, channel, n, depth) for n in natives for channel in ("trades", "book")
    )
    only_trades = v.connections(market, natives, ("trades",), depth, None)
    assert {c for p in only_trades for c in p.channels} == {"trades"}
    assert all(
        v.parse_topic(market, t) == Topic("trades", t_native(v, market, t))
        for p in only_trades
        for t in p.topics
    )


def t_native(v: Venue, market: str, topic: str) -> str:
    parsed = v.parse_topic(market, topic)
    assert parsed is not None
    return parsed.native


@pytest.mark.parametrize(("name", "market"), MARKETS, ids=ids(MARKETS))
def test_session_batches_every_topic_and_never_raises_on_garbage(name: str, market: str) -> None:
    v = VENUES[name]
    m = v.markets[market]
    natives = [f"COIN{i}USDT" for i in range(40)]
    for plan in v.connections(market, natives, ("trades", "book"), m.default_book_depth, None):
        session = v.session(market, plan.topics)
        requests = session.subscribe_requests()
        assert sorted(t for r in requests for t in r.topics) == sorted(plan.topics)
        assert len({r.req_id for r in requests}) == len(requests)
        assert all(isinstance(r.payload, bytes) and r.payload for r in requests)
        assert session.send_interval_s >= 0
        assert session.max_lifetime_s is None or session.max_lifetime_s > 0
        heartbeat = session.heartbeat()
        assert heartbeat is None or (isinstance(heartbeat, bytes) and heartbeat)
        for garbage in (b"", b"not json", b"{}", b"[1,2]", b'{"x":'):
            assert not session.is_data(garbage)
            assert isinstance(session.control(garbage), UnknownControl)
        if v.book_recovery(market) is BookRecovery.RESUBSCRIBE:
            book_topic = v.topic(market, "book", natives[0], m.default_book_depth)
            assert session.resubscribe_requests([book_topic])


@pytest.mark.parametrize(("name", "market"), MARKETS, ids=ids(MARKETS))
def test_decoder_counts_malformed_frames_and_raises_nothing(name: str, market: str) -> None:
    v = VENUES[name]
    m = v.markets[market]
    decoder = v.decoder(market, {v.native_symbol(market, m.normalized_example): m.normalized_example})
    out = Decoded()
    decoder.decode([b"not json", b"{}", b'{"x":'], 1, out)
    assert decoder.counters.frames == 3
    assert decoder.counters.malformed + decoder.counters.ignored + decoder.counters.unknown_topics == 3
    assert out.trades == [] and out.books == [] and out.trade_gaps == []
    assert decoder.admit_backfill("X", [], 0) == []


@pytest.mark.parametrize(("name", "market"), MARKETS, ids=ids(MARKETS))
def test_book_and_trade_rules_are_consistent(name: str, market: str) -> None:
    v = VENUES[name]
    sync = v.synchronizer(market)
    assert sync.state is BookState.WAITING and sync.last_id is None and not sync.needs_snapshot()
    assert sync.book.depth() == (0, 0)
    assert sync is not v.synchronizer(market)
    if v.book_recovery(market) is BookRecovery.REST_SNAPSHOT:
        request = v.snapshot_request(market, v.native_symbol(market, v.markets[market].normalized_example))
        assert request.path.startswith("/") and request.weight >= 1
    recovery = v.trade_recovery(market)
    assert recovery.reconnect_reason
    if recovery.on_reconnect is ReconnectTrades.BY_ID:
        assert recovery.max_gap > 0
    budget = v.rest_budget(market)
    assert budget.limit > 0 and budget.window_s > 0


@pytest.mark.parametrize(("name", "market"), MARKETS, ids=ids(MARKETS))
def test_config_asks_the_venue_for_markets_depths_and_symbols(name: str, market: str) -> None:
    m = VENUES[name].markets[market]
    feed = f'[[feeds]]\nexchange = "{name}"\nmarket = "{market}"\nsymbols = ["{m.native_example}"]\n'
    (parsed,) = parse_config(feed, env={}).feeds
    assert (parsed.symbols, parsed.book_depth, parsed.perpetual) == (
        (m.normalized_example,),
        m.default_book_depth,
        m.perpetual,
    )
    bad_depth = max(m.book_depths, default=50) + 1
    with pytest.raises(ConfigError) as caught:
        parse_config(feed + f"book_depth = {bad_depth}\n", source="m.toml", env={})
    (issue,) = caught.value.issues
    if m.full_book:
        expected = f"m.toml:5: feeds[0].book_depth: {name} {market} streams the whole book; remove book_depth"
        assert str(issue).startswith(expected)
    else:
        listed = ", ".join(map(str, m.book_depths))
        expected = "m.toml:5: feeds[0].book_depth: must be one of " + listed + " for " + name
        assert str(issue).startswith(expected)
    with pytest.raises(ConfigError) as caught:
        parse_config(feed.replace(m.native_example, "BTC!USDT"), source="m.toml", env={})
    (issue,) = caught.value.issues
    assert f"write a {market} symbol as {m.native_example} or {m.normalized_example}" in str(issue)
    if m.default_symbols:
        assert FeedConfig(name, market, m.default_symbols, book_depth=m.default_book_depth) in DEFAULT_FEEDS


def test_unknown_exchange_lists_every_venue() -> None:
    feed = '[[feeds]]\nexchange = "nowhere"\nmarket = "spot"\nsymbols = ["BTCUSDT"]\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(feed, source="m.toml", env={})
    expected = f'm.toml:2: feeds[0].exchange: must be one of {", ".join(VENUES)}, got string "nowhere"'
    assert [str(i) for i in caught.value.issues] == [expected]


# -- live, on the simulator -------------------------------------------------------------------------


class Collected:
    """What one venue market streamed through the contract: trades by symbol, books by symbol."""

    def __init__(self, v: Venue, market: str, symbols: dict[str, str]) -> None:
        self.venue = v
        self.market = market
        self.trades: dict[str, list[Trade]] = {s: [] for s in symbols.values()}
        self.books: dict[str, Synchronizer] = {s: v.synchronizer(market) for s in symbols.values()}
        self.natives = {s: n for n, s in symbols.items()}
        self.gaps: list[TradeGap] = []
        self.decoders: dict[str, FrameDecoder] = {}

    def done(self, trades_each: int) -> bool:
        return all(len(t) >= trades_each for t in self.trades.values()) and all(
            b.state is BookState.SYNCED for b in self.books.values()
        )


async def stream(
    sim: SimServer, name: str, market: str, until: Callable[[Collected], bool]
) -> tuple[Collected, Fetch, dict[str, list[int]]]:
    """Run the venue's feeds on the simulator, decode and keep books until `until` holds."""
    v = VENUES[name]
    m = v.markets[market]
    ws_url, rest_url = sim.urls(name, market)
    symbols = {
        v.native_symbol(market, s): s
        for s in (v.normalize_symbol(market, n) for n in sim.listed(name, market))
    }
    natives = list(symbols)
    plans: list[ConnectionPlan] = v.connections(
        market, natives, ("trades", "book"), m.default_book_depth, ws_url
    )
    bus: Bus[RawFrames] = Bus("raw")
    receiver = bus.subscribe("test", 256).receiver()
    decoders = {f"{name}{p.suffix}": v.decoder(market, symbols) for p in plans}
    budget = v.rest_budget(market)
    client = RestClient(rest_url, WeightBudget(budget.limit, budget.window_s))

    async def fetch(request: RestRequest) -> bytes:
        return await client.get(request.path, request.params, request.weight)

    collected = Collected(v, market, symbols)
    collected.decoders = decoders
    live_ids: dict[str, list[int]] = {s: [] for s in symbols.values()}

    def apply(sync: Synchronizer, symbol: str, update: BookUpdate, snapshot: bool) -> None:
        gap = sync.on_snapshot(update) if snapshot else sync.on_update(update)
        assert gap is None, f"{symbol}: {gap}"

    async with trio.open_nursery() as nursery:
        for plan in plans:
            feed = Feed(
                name=f"{name}{plan.suffix}",
                exchange=name,
                market=market,
                url=plan.url,
                session_factory=functools.partial(v.session, market, plan.topics),
                bus=bus,
                counters=FeedCounters(),
                stale_timeout_s=10.0,
                ping_interval_s=5.0,
            )
            await nursery.start(feed.run)
        with receiver:
            while not until(collected):
                for batch in await receive_batches(receiver):
                    for raw in batch:
                        out = Decoded()
                        decoders[raw.feed].decode(raw.frames, raw.recv_ts, out)
                        collected.gaps += out.trade_gaps
                        for trade in out.trades:
                            collected.trades[trade.symbol].append(trade)
                            if trade.id.isdigit():
                                live_ids[trade.symbol].append(int(trade.id))
                        for update in out.books:
                            apply(collected.books[update.symbol], update.symbol, update, False)
                for symbol, sync in collected.books.items():
                    if sync.needs_snapshot():
                        sync.snapshot_requested()
                        request = v.snapshot_request(market, collected.natives[symbol])
                        body = await fetch(request)
                        apply(sync, symbol, v.parse_snapshot(market, body, symbol, 0), True)
        nursery.cancel_scope.cancel()
    return collected, fetch, live_ids


@pytest.mark.parametrize(("name", "market"), SIMULATED, ids=ids(SIMULATED))
async def test_streams_trades_and_synced_books_on_the_simulator(name: str, market: str) -> None:
    async with trio.open_nursery() as nursery:
        sim = SimServer(SimConfig(seed=7, rate=40.0, book_rate=40.0))
        await nursery.start(sim.run)
        with trio.fail_after(30):
            collected, fetch, live_ids = await stream(sim, name, market, lambda c: c.done(5))
        v = VENUES[name]
        for symbol, trades in collected.trades.items():
            assert all(t.exchange == name and t.symbol == symbol for t in trades)
            assert all(t.side in ("buy", "sell") and t.price > 0 and t.amount > 0 for t in trades)
            assert len({t.id for t in trades}) == len(trades), "duplicates reached the pipeline"
        for symbol, sync in collected.books.items():
            bids, asks = sync.book.top(1)
            assert bids and asks and bids[0][0] < asks[0][0], symbol
        with trio.fail_after(30):
            await check_trade_recovery(v, market, collected, fetch, live_ids)
        nursery.cancel_scope.cancel()


async def check_trade_recovery(
    v: Venue, market: str, collected: Collected, fetch: Fetch, live_ids: dict[str, list[int]]
) -> None:
    """The venue's REST recovery brings back what the stream carried, and nothing it had already."""
    recovery = v.trade_recovery(market)
    symbol = sorted(collected.trades)[0]
    native = collected.natives[symbol]
    trades = collected.trades[symbol]
    if recovery.on_reconnect is ReconnectTrades.BY_ID:
        seen = live_ids[symbol]
        first, last = seen[0], seen[-1]
        assert last - first >= 2
        gap = TradeGap(v.name, market, symbol, native, first + 1, last, trades[0].ts, trades[-1].ts)
        fetched = []
        async for page in v.fill_gap(gap, fetch):
            fetched += page
        got = [int(t.id) for t in fetched]
        assert all(first < i < last for i in got) and got == sorted(set(got))
        assert {i for i in seen if first < i < last} <= set(got)
        assert all(t.symbol == symbol and t.exchange == v.name for t in fetched)
    elif recovery.on_reconnect is ReconnectTrades.CATCH_UP:
        fetched = await v.catch_up(market, native, symbol, fetch)
        assert fetched and all(t.symbol == symbol and t.exchange == v.name for t in fetched)
        assert [t.ts for t in fetched] == sorted(t.ts for t in fetched)
        streamed = {t.id for t in trades}
        assert streamed & {t.id for t in fetched}, "the latest trades overlap what was streamed"
        # The decoders that streamed them admit none of those again; a fresh one admits each once.
        for decoder in collected.decoders.values():
            admitted = decoder.admit_backfill(native, fetched, 0)
            assert not streamed & {t.id for t in admitted}
        fresh = v.decoder(market, {native: symbol})
        assert len(fresh.admit_backfill(native, fetched, 0)) == len({t.id for t in fetched})
        assert fresh.admit_backfill(native, fetched, 0) == []
