"""Edits to the TOML configuration file that keep its comments, order and formatting (tomlkit).

Used by the symbols API: adding or removing a symbol rewrites only the `symbols` array of the matching
`[[feeds]]` table (or appends a new table), validates the whole result with the same checks as
`check-config`, and replaces the file atomically — an edit that would make the file invalid is refused
and the file is left untouched.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import AoT, Array, Table

from marketflow.config import Config, ConfigError, parse_config
from marketflow.model import SymbolError, normalize_symbol

PERPETUAL_MARKETS = frozenset({"linear", "usdm"})


class EditError(Exception):
    """The edit cannot be made; the message says why (the file is unchanged)."""


def _feeds(doc: tomlkit.TOMLDocument) -> AoT | None:
    feeds = doc.get("feeds")
    if feeds is None:
        return None
    if not isinstance(feeds, AoT):
        raise EditError("the configuration's feeds are not written as [[feeds]] tables")
    return feeds


def _matches(table: Table | dict[str, Any], exchange: str, market: str, name: str | None) -> bool:
    if name is not None and table.get("name", f"{table.get('exchange')}-{table.get('market')}") != name:
        return False
    return table.get("exchange") == exchange and table.get("market") == market


def _same_symbol(written: object, normalized: str, perpetual: bool) -> bool:
    try:
        return isinstance(written, str) and normalize_symbol(written, perpetual=perpetual) == normalized
    except SymbolError:
        return False


def edit_symbols(
    path: str | os.PathLike[str],
    *,
    exchange: str,
    market: str,
    symbol: str,
    add: bool,
    name: str | None = None,
    env: dict[str, str] | None = None,
) -> Config:
    """Add or remove one symbol of a feed in the file at `path`; returns the new, validated config.

    Adding to a feed that does not exist appends a `[[feeds]]` table for it; removing a feed's last symbol
    removes its table. Raises `EditError` (nothing written) when the edit is impossible or invalid.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise EditError(f"cannot read {file}: {exc.strerror or exc}") from exc
    doc = tomlkit.parse(text)
    perpetual = market in PERPETUAL_MARKETS
    try:
        normalized = normalize_symbol(symbol, perpetual=perpetual)
    except SymbolError as exc:
        raise EditError(f"symbol {symbol!r}: {exc}") from exc
    feeds = _feeds(doc)
    table = next((t for t in feeds or [] if _matches(t, exchange, market, name)), None)
    if add:
        if table is None:
            new = tomlkit.table()
            new.add("exchange", exchange)
            new.add("market", market)
            new.add("symbols", [symbol])
            if name is not None:
                new.add("name", name)
            if feeds is None:
                doc.add("feeds", tomlkit.aot())
                feeds = _feeds(doc)
                assert feeds is not None
            feeds.append(new)
        else:
            symbols = table.get("symbols")
            if not isinstance(symbols, Array):
                raise EditError(f"feed {exchange} {market} has no symbols array to add to")
            if any(_same_symbol(s, normalized, perpetual) for s in symbols):
                raise EditError(f"{normalized} is already collected from {exchange} {market}")
            symbols.append(symbol)
    else:
        if table is None:
            raise EditError(f"no feed for {exchange} {market} in {file}")
        symbols = table.get("symbols")
        if not isinstance(symbols, Array):
            raise EditError(f"feed {exchange} {market} has no symbols array")
        index = next((i for i, s in enumerate(symbols) if _same_symbol(s, normalized, perpetual)), None)
        if index is None:
            raise EditError(f"{normalized} is not collected from {exchange} {market}")
        if len(symbols) == 1:
            assert feeds is not None
            feeds.remove(table)
        else:
            del symbols[index]
    new_text = tomlkit.dumps(doc)
    try:
        config = parse_config(new_text, source=str(file), env=env)
    except ConfigError as exc:
        raise EditError(f"the edit would make {file} invalid:\n{exc}") from exc
    _replace(file, new_text)
    return config


def _replace(file: Path, text: str) -> None:
    """Write `text` to a temporary file beside `file`, fsync it, then rename it over `file`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", dir=file.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        mode = file.stat().st_mode & 0o777 if file.exists() else 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
