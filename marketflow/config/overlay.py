"""The symbols overlay: symbol changes made over HTTP where the configuration file cannot be written.

The shipped systemd unit (`ProtectSystem=strict`, `DynamicUser`) and the container (a root-owned
`/etc/marketflow`) give the daemon a read-only configuration file. There the symbols API records each change
in `<daemon.state_dir>/symbols.toml` instead, and every load of the configuration (start, SIGHUP,
`check-config`) applies it after the main file:

    [[feeds]]
    exchange = "bybit"
    market = "spot"
    add = ["SOL-USDT"]
    remove = ["ETH-USDT"]

`add` appends symbols to the first feed of that exchange and market (or creates that feed, with default
settings), `remove` drops them, and a feed left without symbols is dropped. It holds differences, not a
copy, so edits a person makes to the main file keep taking effect.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import attrs

from marketflow.config.issues import ConfigError, ConfigIssue, format_key
from marketflow.config.load import config_digest
from marketflow.config.sections import Config, FeedConfig
from marketflow.config.symbols import MAX_SYMBOL_LENGTH as MAX_SYMBOL_LENGTH  # re-exported
from marketflow.config.symbols import check_symbol_text
from marketflow.exchanges import VENUES
from marketflow.exchanges.base import Venue
from marketflow.model import SymbolError

OVERLAY_FILE: Final = "symbols.toml"
_ENTRY_KEYS: Final = ("exchange", "market", "add", "remove")


@attrs.frozen
class SymbolDelta:
    """Symbols added to and removed from the first feed of (exchange, market); normalized, disjoint."""

    exchange: str
    market: str
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


def clean_symbol(raw: str, market: str, exchange: str | None = None) -> str:
    """The normalized symbol (BTC-USDT, or BTC-USDT-PERP on a perpetual market) of `raw`, written native
    (BTCUSDT) or normalized, by the venue's rule (`exchange`; without one, the first venue with that
    market). Raises `SymbolError` naming what is wrong: nothing is stripped or guessed, so whitespace,
    control and non-ASCII characters (look-alikes such as a Cyrillic `С`) are refused."""
    try:
        check_symbol_text(raw)
    except SymbolError as exc:
        raise SymbolError(f"{exc}; write a symbol as BTCUSDT or BTC-USDT") from None
    return _venue(exchange, market).normalize_symbol(market, raw)


def _venue(exchange: str | None, market: str) -> Venue:
    if exchange is not None:
        check_market(exchange, market)
        return VENUES[exchange]
    for venue in VENUES.values():
        if market in venue.markets:
            return venue
    raise SymbolError(f"no exchange has a market {market!r}")


def check_market(exchange: str, market: str) -> None:
    """Raise `SymbolError` unless `market` is a market of `exchange`."""
    venue = VENUES.get(exchange)
    if venue is None:
        raise SymbolError(f"unknown exchange {exchange!r}; one of {', '.join(VENUES)}")
    if market not in venue.markets:
        raise SymbolError(f"{exchange} has no market {market!r}; one of {', '.join(venue.markets)}")


def overlay_path(config: Config) -> Path:
    """Where the symbols overlay of `config` lives: `<daemon.state_dir>/symbols.toml`."""
    return Path(config.daemon.state_dir) / OVERLAY_FILE


def read_overlay(path: Path) -> str | None:
    """The overlay's text, or None when there is none; an unreadable one is a `ConfigError` naming it."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        return None
    except OSError as exc:
        reason = f"cannot read the symbols overlay: {exc.strerror or exc}"
        raise ConfigError([ConfigIssue(str(path), None, "<file>", reason)]) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigIssue(str(path), None, "<toml>", "the file is not valid UTF-8")]) from None


def parse_overlay(text: str, source: str) -> tuple[SymbolDelta, ...]:
    """The overlay's entries; a `ConfigError` lists every problem (key paths like `feeds[0].add[1]`)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigIssue(source, None, "<toml>", f"invalid TOML: {exc}")]) from None
    issues: list[ConfigIssue] = []

    def report(path: tuple[str | int, ...], reason: str) -> None:
        issues.append(ConfigIssue(source, None, format_key(path), reason))

    for key in doc:
        if key != "feeds":
            report((key,), "unknown key; the symbols overlay holds only [[feeds]] tables")
    raw = doc.get("feeds", [])
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        report(("feeds",), "must be [[feeds]] tables")
        raw = []
    deltas = [_delta(index, table, report) for index, table in enumerate(raw)]
    if issues:
        raise ConfigError(issues)
    return tuple(d for d in deltas if d is not None)


def _delta(index: int, table: dict[str, Any], report: Any) -> SymbolDelta | None:
    path: tuple[str | int, ...] = ("feeds", index)
    for key in table:
        if key not in _ENTRY_KEYS:
            report((*path, key), f"unknown key; one of {', '.join(_ENTRY_KEYS)}")
    exchange, market = table.get("exchange"), table.get("market")
    try:
        check_market(str(exchange), str(market))
    except SymbolError as exc:
        report(path, str(exc))
        return None
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("add", "remove"):
        value = table.get(key, [])
        if not isinstance(value, list):
            report((*path, key), "must be an array of symbols")
            return None
        symbols: list[str] = []
        for i, item in enumerate(value):
            try:
                if not isinstance(item, str):
                    raise SymbolError(f'must be a symbol string like "BTCUSDT", got {item!r}')
                symbols.append(clean_symbol(item, str(market), str(exchange)))
            except SymbolError as exc:
                report((*path, key, i), str(exc))
        lists[key] = tuple(dict.fromkeys(symbols))
    both = set(lists["add"]) & set(lists["remove"])
    if both:
        report(path, f"{', '.join(sorted(both))} both added and removed")
    return SymbolDelta(str(exchange), str(market), lists["add"], lists["remove"])


def apply_deltas(config: Config, deltas: Iterable[SymbolDelta], source: str) -> Config:
    """`config` with the overlay's changes made to its feeds; a `ConfigError` if the result is invalid."""
    feeds = list(config.feeds)
    for delta in deltas:
        index = next(
            (i for i, f in enumerate(feeds) if (f.exchange, f.market) == (delta.exchange, delta.market)), None
        )
        current = () if index is None else feeds[index].symbols
        symbols = tuple(dict.fromkeys(s for s in (*current, *delta.add) if s not in delta.remove))
        if index is None:
            if symbols:
                feeds.append(FeedConfig(delta.exchange, delta.market, symbols))
        elif symbols:
            feeds[index] = attrs.evolve(feeds[index], symbols=symbols)
        else:
            del feeds[index]
    names = [f.name for f in feeds]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        reason = f"adds a feed named {', '.join(clashes)}, a name another feed already has"
        raise ConfigError([ConfigIssue(source, None, "feeds", reason)])
    return attrs.evolve(config, feeds=tuple(feeds))


def apply_overlay_file(config: Config, text: str) -> Config:
    """`config` (parsed from the main file's `text`) with the overlay under its state_dir applied."""
    path = overlay_path(config)
    overlay = read_overlay(path)
    if overlay is None:
        return config
    new = apply_deltas(config, parse_overlay(overlay, str(path)), str(path))
    return attrs.evolve(new, digest=config_digest(text, overlay))


def render_overlay(deltas: Iterable[SymbolDelta], main: str) -> str:
    """The overlay's text: a header saying what it is, then one [[feeds]] table per non-empty entry."""
    lines = [
        "# Symbol changes made over HTTP (POST/DELETE /collectors/symbols), written here because",
        f"# {main} could not be written. marketflow applies them after that file at start, on",
        "# reload (SIGHUP) and in check-config. To make them part of that file, copy them into it,",
        "# delete this file, then reload.",
    ]
    for delta in deltas:
        if not delta.add and not delta.remove:
            continue
        lines += ["", "[[feeds]]", f'exchange = "{delta.exchange}"', f'market = "{delta.market}"']
        for key, symbols in (("add", delta.add), ("remove", delta.remove)):
            if symbols:
                quoted = ", ".join(f'"{s}"' for s in symbols)  # checked: [A-Z0-9-] needs no escaping
                lines.append(f"{key} = [{quoted}]")
    return "\n".join(lines) + "\n"
