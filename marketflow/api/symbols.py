"""`GET/POST/DELETE /collectors/symbols`: change what is collected, live, and write it back to the TOML.

A change edits the configuration file (keeping its comments, order and formatting), validates the whole
file, then applies it through the same path as SIGHUP: only the edited feed is started, stopped or
restarted. Where the file is read-only (the shipped systemd unit and container) the change goes to the
symbols overlay under the state directory (`marketflow.config.overlay`). One change at a time: reading,
editing, writing and applying happen under one lock (`Daemon.edit_config`). A daemon running on built-in
defaults has no file to write back to, a file edited since the last reload is not built on: both say so.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta
from quart import Blueprint

from marketflow.api.app import context, error_response
from marketflow.api.keys import Scope
from marketflow.api.routes import Exchange, Market, api
from marketflow.config import Config
from marketflow.config.edit import EditError, change_symbols

blueprint = Blueprint("symbols", __name__)

Native = Annotated[str, Meta(description="native (BTCUSDT) or normalized (BTC-USDT, BTC-USDT-PERP)")]


class SymbolChange(msgspec.Struct):
    exchange: Exchange
    market: Market
    symbol: Native


class SymbolRemoval(msgspec.Struct):
    exchange: Exchange
    market: Market


class FeedSymbols(msgspec.Struct):
    name: str
    exchange: str
    market: str
    symbols: list[str]
    channels: list[str]


class SymbolsOut(msgspec.Struct):
    feeds: list[FeedSymbols]
    config: str | None


class ChangeOut(SymbolsOut):
    written: Annotated[str, Meta(description="the file changed: the configuration or the symbols overlay")]
    added: list[str]
    removed: list[str]
    restarted: list[str]
    needs_restart: list[str]


def _listing() -> dict[str, Any]:
    daemon = context().daemon
    feeds = [
        {
            "name": f.name,
            "exchange": f.exchange,
            "market": f.market,
            "symbols": list(f.symbols),
            "channels": list(f.channels),
        }
        for f in daemon.config.feeds
    ]
    return {"feeds": feeds, "config": daemon.config.source}


@blueprint.get("/collectors/symbols")
@api(SymbolsOut, scope=Scope.READ, errors=(401, 403))
async def list_symbols() -> dict[str, Any]:
    """The collected symbols per feed, and the configuration file changes are written to."""
    return _listing()


async def _change(exchange: str, market: str, symbol: str, *, add: bool) -> Any:
    daemon = context().daemon
    if daemon.config.source is None:
        return error_response(
            409,
            "no_config_file",
            "the daemon runs on built-in defaults, so there is no file to write the change to; "
            "start it with --config PATH",
        )
    written: list[str] = []

    def edit(running: Config) -> Config:
        change = change_symbols(running, exchange=exchange, market=market, symbol=symbol, add=add)
        written.append(change.written)
        return change.config

    try:
        result = await daemon.edit_config(edit)
    except EditError as exc:
        param = "symbol" if exc.status != 409 else None
        return error_response(exc.status, exc.code, str(exc), param)
    return {
        **_listing(),
        "written": written[0],
        "added": list(result.added),
        "removed": list(result.removed),
        "restarted": list(result.restarted),
        "needs_restart": list(result.needs_restart),
    }


@blueprint.post("/collectors/symbols")
@api(ChangeOut, scope=Scope.WRITE, query=SymbolChange, errors=(400, 401, 403, 409, 503))
async def add_symbol(query_args: SymbolChange) -> Any:
    """Start collecting a symbol: the feed for (exchange, market) gets it, or a new feed is added."""
    return await _change(query_args.exchange, query_args.market, query_args.symbol, add=True)


@blueprint.delete("/collectors/symbols/<symbol>")
@api(ChangeOut, scope=Scope.WRITE, query=SymbolRemoval, errors=(400, 401, 403, 404, 409, 503))
async def remove_symbol(symbol: str, query_args: SymbolRemoval) -> Any:
    """Stop collecting a symbol (a feed left without symbols is removed)."""
    return await _change(query_args.exchange, query_args.market, symbol, add=False)
