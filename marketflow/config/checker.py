"""The walk over a parsed TOML document: every value checked and converted, every problem collected with
its line, cross-key rules (feeds, markets, depths, channels, symbols), then the typed `Config` built."""

from __future__ import annotations

import difflib
import posixpath
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import attrs

from marketflow.config.issues import ConfigIssue, _Path, format_key
from marketflow.config.locator import _KeyLocator
from marketflow.config.sections import (
    CHANNELS,
    DEFAULT_FEEDS,
    ROLES,
    STORAGE_URL_ENV,
    AnalyticsConfig,
    ArchiveConfig,
    BooksConfig,
    CaptureConfig,
    Config,
    DaemonConfig,
    DerivativesConfig,
    FeedConfig,
    HttpConfig,
    NatsConfig,
    StorageConfig,
    SupervisorConfig,
)
from marketflow.config.symbols import check_symbol_text
from marketflow.config.values import (
    _ARCHIVE,
    _BOOKS,
    _CAPTURE,
    _DAEMON,
    _DERIVATIVES,
    _HTTP,
    _NATS,
    _REQUIRED_FEED_KEYS,
    _STORAGE,
    _SUPERVISOR,
    _TOP_KEYS,
    _boolean,
    _Check,
    _choice,
    _decimal,
    _describe,
    _feed_name,
    _integer,
    _interval_seconds,
    _message_mb,
    _Rejected,
    _seconds,
    _storage_url,
    _string,
    _url,
    _value_area,
)
from marketflow.exchanges import VENUES
from marketflow.exchanges.base import Market
from marketflow.model import SymbolError, normalize_symbol

_SYMBOL = re.compile(r"[A-Z0-9]+-[A-Z0-9]+(-PERP)?")


def _normalized_on_some_venue(symbol: str) -> bool:
    """True when some market of some venue writes `symbol` normalized exactly so."""
    for venue in VENUES.values():
        for market in venue.markets:
            try:
                if venue.normalize_symbol(market, symbol) == symbol:
                    return True
            except SymbolError:
                continue
    return False


def _symbol_text_problem(symbol: str) -> str | None:
    """What the symbols API would refuse in `symbol` (look-alike letters, whitespace), or None."""
    try:
        check_symbol_text(symbol)
    except SymbolError as exc:
        return str(exc)
    return None


def _write_as(market: Market) -> str:
    return f"write a {market.name} symbol as {market.native_example} or {market.normalized_example}"


def _default(cls: type, name: str) -> Any:
    return attrs.fields_dict(cls)[name].default


class _Checker:
    """Walks the parsed document, converting values and collecting every issue with its line."""

    def __init__(self, source: str, locator: _KeyLocator) -> None:
        self.source = source
        self.locator = locator
        self.issues: list[ConfigIssue] = []

    def report(self, path: _Path, reason: str, *, located: bool = True) -> None:
        line = self.locator.line_for(path) if located else None
        self.issues.append(ConfigIssue(self.source, line, format_key(path), reason))

    def unknown(self, path: _Path, known: Iterable[str]) -> None:
        known = list(known)
        key = str(path[-1])
        close = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.6)
        hint = f", did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(known)}"
        self.report(path, "unknown key" + hint)

    def table(self, value: object, path: _Path) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return value
        self.report(path, f"must be a table ([{format_key(path)}]), got {_describe(value)}")
        return None

    def fields(self, table: Mapping[str, Any], path: _Path, checks: Mapping[str, _Check]) -> dict[str, Any]:
        """Check each key of `table`; return the converted values of those that passed."""
        out: dict[str, Any] = {}
        for key, value in table.items():
            if key not in checks:
                self.unknown((*path, key), checks)
                continue
            try:
                out[key] = checks[key](value)
            except _Rejected as exc:
                if exc.reason is not None:
                    self.report((*path, key), exc.reason)
        return out

    def section(self, doc: Mapping[str, Any], name: str, checks: Mapping[str, _Check]) -> dict[str, Any]:
        table = self.table(doc.get(name, {}), (name,))
        return {} if table is None else self.fields(table, (name,), checks)

    def check(self, doc: Mapping[str, Any], env: Mapping[str, str]) -> Config | None:
        for key in doc:
            if key not in _TOP_KEYS:
                self.unknown((key,), _TOP_KEYS)
        daemon = self.section(doc, "daemon", _DAEMON)
        http = self.section(doc, "http", _HTTP)
        storage = self.section(doc, "storage", _STORAGE)
        supervisor = self.section(doc, "supervisor", _SUPERVISOR)
        initial = supervisor.get("backoff_initial_s", _default(SupervisorConfig, "backoff_initial_s"))
        maximum = supervisor.get("backoff_max_s", _default(SupervisorConfig, "backoff_max_s"))
        if maximum < initial:
            given = "" if "backoff_max_s" in supervisor else " (the default)"
            reason = f"must be >= backoff_initial_s ({initial:g}), got {maximum:g}{given}"
            self.report(("supervisor", "backoff_max_s"), reason)
        books = self.section(doc, "books", _BOOKS)
        derivatives = self.section(doc, "derivatives", _DERIVATIVES)
        capture = self.section(doc, "capture", _CAPTURE)
        nats = self.section(doc, "nats", _NATS)
        if "max_age" in nats:
            nats["max_age_s"] = nats.pop("max_age")
        if "roles" in daemon and set(daemon["roles"]) != set(ROLES) and not nats.get("servers"):
            self.report(
                ("daemon", "roles"),
                f"a daemon without every role ({', '.join(ROLES)}) needs NATS to reach the others: "
                'set [nats] servers, e.g. ["nats://127.0.0.1:4222"]',
            )
        archive = self.section(doc, "archive", _ARCHIVE)
        retention = storage.get("retention_days", 0)
        if 0 < retention <= archive.get("after_days", 0):
            reason = f"must be below storage.retention_days ({retention}): retention would delete them first"
            self.report(("archive", "after_days"), reason)
        feeds = self.feeds(doc)
        analytics = self.analytics(doc)
        if env.get(STORAGE_URL_ENV):
            try:
                storage["url"] = _storage_url(env[STORAGE_URL_ENV])
            except _Rejected as exc:
                self.report(("storage", "url"), f"from ${STORAGE_URL_ENV}: {exc.reason}", located=False)
        elif "url" not in storage:
            # SPEC §3: the SQLite database lives under state_dir unless told otherwise.
            state_dir = daemon.get("state_dir", _default(DaemonConfig, "state_dir"))
            storage["url"] = "sqlite:///" + posixpath.join(state_dir, "marketflow.db")
        if self.issues:
            return None
        return Config(
            daemon=DaemonConfig(**daemon),
            http=HttpConfig(**http),
            storage=StorageConfig(**storage),
            supervisor=SupervisorConfig(**supervisor),
            books=BooksConfig(**books),
            derivatives=DerivativesConfig(**derivatives),
            capture=CaptureConfig(**capture),
            nats=NatsConfig(**nats),
            archive=ArchiveConfig(**archive),
            feeds=DEFAULT_FEEDS if feeds is None else tuple(FeedConfig(**feed) for feed in feeds),
            analytics=AnalyticsConfig(**analytics),
        )

    def feeds(self, doc: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        """Checked keyword arguments for each feed; None when the file has no `feeds` (the defaults)."""
        if "feeds" not in doc:
            return None
        raw = doc["feeds"]
        if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
            self.report(("feeds",), f"must be an array of tables, one [[feeds]] each, got {_describe(raw)}")
            return []
        feeds = [self.feed(index, item) for index, item in enumerate(raw)]
        seen: dict[str, int] = {}
        for index, feed in enumerate(feeds):
            name = feed.get("name")
            if name is None and "exchange" in feed and "market" in feed:
                name = f"{feed['exchange']}-{feed['market']}"
            if name is None:
                continue
            if name in seen:
                reason = f"feeds[{seen[name]}] and feeds[{index}] are both named {name!r}; "
                if "name" in feed:
                    reason += "feed names must be unique"
                else:
                    reason += "the name defaults to exchange-market, so give one of them a distinct name"
                self.report(("feeds", index, "name"), reason)
            else:
                seen[name] = index
        return feeds

    def feed(self, index: int, table: Mapping[str, Any]) -> dict[str, Any]:
        path: _Path = ("feeds", index)
        for key, example in _REQUIRED_FEED_KEYS.items():
            if key not in table:
                self.report((*path, key), f"required key is missing, e.g. {key} = {example}")
        checks: dict[str, _Check] = {
            "exchange": _choice(*VENUES),
            "market": _string,
            "symbols": lambda value: value,  # checked below, once the market is known
            "channels": lambda value: self.channels(value, (*path, "channels")),
            "book_depth": _integer(1),
            "ws_url": _url("ws://", "wss://"),
            "rest_url": _url("http://", "https://"),
            "name": _feed_name,
            "stale_timeout_s": _seconds,
            "ping_interval_s": _seconds,
            "max_message_mb": _message_mb,
        }
        feed = self.fields(table, path, checks)
        exchange = feed.get("exchange")
        venue = None if exchange is None else VENUES[exchange]
        if "market" in feed:
            if venue is not None:
                markets = tuple(venue.markets)
            else:
                markets = tuple(dict.fromkeys(m for v in VENUES.values() for m in v.markets))
            if feed["market"] not in markets:
                scope = f" for {exchange}" if exchange else ""
                got = _describe(feed.pop("market"))
                self.report((*path, "market"), f"must be one of {', '.join(markets)}{scope}, got {got}")
        market = None if venue is None else venue.markets.get(feed.get("market", ""))
        if market is not None and market.full_book:
            if "book_depth" in feed:
                self.report(
                    (*path, "book_depth"),
                    f"{feed['exchange']} {market.name} streams the whole book; remove book_depth "
                    "(no depth is chosen for it)",
                )
            feed["book_depth"] = market.default_book_depth
        elif venue is not None:
            # The market's depths; the venue's when the market is not known (the same on every market
            # of a venue that does not distinguish them, and then the message names just the venue).
            every = [m.book_depths for m in venue.markets.values()]
            depths = (
                market.book_depths if market is not None else tuple(sorted({d for ds in every for d in ds}))
            )
            depth_scope = (
                venue.name
                if market is None or all(ds == every[0] for ds in every)
                else f"{venue.name} {market.name}"
            )
            default = market.default_book_depth if market is not None else _default(FeedConfig, "book_depth")
            if feed.get("book_depth", default) not in depths:
                got = feed.get("book_depth", default)
                listed = ", ".join(map(str, depths))
                self.report((*path, "book_depth"), f"must be one of {listed} for {depth_scope}, got {got}")
            elif market is not None:
                feed.setdefault("book_depth", market.default_book_depth)
        if market is not None and "channels" in feed:
            for index, channel in enumerate(feed["channels"]):
                if channel not in market.channels:
                    offered = ", ".join(market.channels)
                    self.report(
                        (*path, "channels", index),
                        f"{exchange} {market.name} has no {channel!r} channel; it offers {offered}",
                    )
        if "symbols" in feed:
            # Spot or perpetual decides the normalized form, so symbols wait for a valid market.
            feed["symbols"] = self.symbols(feed["symbols"], (*path, "symbols"), exchange, market)
        return feed

    def symbols(
        self, value: object, path: _Path, exchange: str | None, market: Market | None
    ) -> tuple[str, ...]:
        """Normalized symbols; without a valid `market` only their types are checked."""
        if not isinstance(value, list) or not value:
            got = _describe(value)
            self.report(path, f'must be a non-empty array of symbols, e.g. ["BTCUSDT"], got {got}')
            return ()
        out: dict[str, int] = {}
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.report((*path, index), f'must be a symbol string like "BTCUSDT", got {_describe(item)}')
            elif (problem := _symbol_text_problem(item)) is not None:
                hint = "" if market is None else "; " + _write_as(market)
                self.report((*path, index), problem + hint)
            elif exchange is not None and market is not None:
                try:
                    symbol = VENUES[exchange].normalize_symbol(market.name, item)
                except SymbolError as exc:
                    self.report((*path, index), f"{exc}; {_write_as(market)}")
                    continue
                if symbol in out:
                    self.report(
                        (*path, index), f"duplicate of {format_key((*path, out[symbol]))} (both are {symbol})"
                    )
                out.setdefault(symbol, index)
        return tuple(out)

    def channels(self, value: object, path: _Path) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            allowed = ", ".join(CHANNELS)
            raise _Rejected(f"must be a non-empty array of channels ({allowed}), got {_describe(value)}")
        bad = len(self.issues)
        for index, item in enumerate(value):
            if item not in CHANNELS:
                self.report((*path, index), f"must be one of {', '.join(CHANNELS)}, got {_describe(item)}")
            elif item in value[:index]:
                self.report((*path, index), f"duplicate channel {item!r}")
        if len(self.issues) > bad:
            raise _Rejected()
        return tuple(value)

    def analytics(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        checks: dict[str, _Check] = {
            "candle_intervals": lambda value: self.intervals(value, ("analytics", "candle_intervals")),
            "value_area": _value_area,
            "large_trade_notional": lambda value: _decimal(value, floats=False),
            "bin_size": lambda value: self.bin_sizes(value, ("analytics", "bin_size")),
            "enabled": _boolean,
            "live_bars": _integer(1),
        }
        return self.section(doc, "analytics", checks)

    def intervals(self, value: object, path: _Path) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise _Rejected(f'must be an array of intervals, e.g. ["1m", "5m"], got {_describe(value)}')
        bad = len(self.issues)
        seen: dict[int, int] = {}
        for index, item in enumerate(value):
            try:
                seconds = _interval_seconds(item)
            except _Rejected as exc:
                self.report((*path, index), str(exc.reason))
                continue
            if seconds in seen:
                self.report(
                    (*path, index),
                    f"duplicate of {format_key((*path, seen[seconds]))} (both are {seconds} seconds)",
                )
            seen.setdefault(seconds, index)
        if len(self.issues) > bad:
            raise _Rejected()
        return tuple(value)

    def bin_sizes(self, value: object, path: _Path) -> dict[str, Decimal]:
        table = self.table(value, path)
        if table is None:
            raise _Rejected()
        bad = len(self.issues)
        out: dict[str, Decimal] = {}
        for symbol, size in table.items():
            problem = _symbol_text_problem(symbol)
            if problem is not None and not symbol.isascii():  # no venue reads it: name the look-alike
                self.report((*path, symbol), f"{problem}; write a normalized symbol, e.g. 'BTC-USDT'")
                continue
            if not _normalized_on_some_venue(symbol):
                try:
                    normalized = normalize_symbol(symbol, perpetual=symbol.upper().endswith("-PERP"))
                except SymbolError:
                    normalized = None
                example = "'BTC-USDT' or 'BTC-USDT-PERP'"
                if "-" in symbol and normalized and _SYMBOL.fullmatch(normalized):
                    example = repr(normalized)
                self.report((*path, symbol), f"must be a normalized symbol, e.g. {example}")
                continue
            if problem is not None:  # a venue lenient about the text (OKX takes over-long names)
                self.report((*path, symbol), f"{problem}; write a normalized symbol, e.g. 'BTC-USDT'")
                continue
            try:
                out[symbol] = _decimal(size, floats=False)
            except _Rejected as exc:
                self.report((*path, symbol), str(exc.reason))
        if len(self.issues) > bad:
            raise _Rejected()
        return out
