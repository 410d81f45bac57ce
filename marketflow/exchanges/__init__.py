"""Venue modules (one per exchange, same exported names; see `base.py`) and the WebSocket transport."""

from __future__ import annotations

from types import ModuleType

from marketflow.exchanges import binance, bybit

VENUES: dict[str, ModuleType] = {bybit.EXCHANGE: bybit, binance.EXCHANGE: binance}


def venue(exchange: str) -> ModuleType:
    """The venue module for an exchange name; `KeyError` names the known ones."""
    try:
        return VENUES[exchange]
    except KeyError:
        raise KeyError(f"unknown exchange {exchange!r}; known: {sorted(VENUES)}") from None
