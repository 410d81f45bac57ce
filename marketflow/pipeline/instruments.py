"""The instrument catalog: metadata of every configured market's instruments, loaded over REST, kept fresh.

Venues whose amounts are contracts (perpetual swaps, futures) say what a contract is worth
(`Venue.instruments`: contract value, currency, linear or inverse, tick and lot size). The catalog asks
every configured (exchange, market) at start and then every `refresh_s` (contract values change rarely,
but they do change), through the market's REST client and budget. A failed load keeps what was known and
is tried again after `retry_s`. What it holds feeds `/markets` (`amount_unit`, `contract_value`, ...) and
the large-trade notional of analytics (`contracts`, a mapping shared with the engine and updated in
place), so nothing venue-specific reaches either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import attrs
import trio

from marketflow import exchanges
from marketflow.exchanges.base import Fetch, Instrument, RestRequest
from marketflow.model import Contract, now_us
from marketflow.pipeline.rest import RestClient, RestError

log = logging.getLogger("marketflow.instruments")

REFRESH_S = 3600.0
RETRY_S = 30.0


@attrs.frozen
class MarketSymbols:
    """One configured (exchange, market) and its symbols, native → normalized."""

    exchange: str
    market: str
    symbols: Mapping[str, str]


@attrs.frozen
class CatalogStatistics:
    name: str
    instruments: int
    contracts: int
    loads: int
    failures: int
    last_loaded_at: int | None
    last_error: str | None


class InstrumentCatalog:
    """Loads `Venue.instruments` for every configured market; see the module docstring."""

    def __init__(
        self,
        markets: Callable[[], Sequence[MarketSymbols]],
        clients: Mapping[tuple[str, str], RestClient],
        *,
        refresh_s: float = REFRESH_S,
        retry_s: float = RETRY_S,
        name: str = "instruments",
    ) -> None:
        self.name = name
        self._markets = markets
        self._clients = clients
        self._refresh_s = refresh_s
        self._retry_s = retry_s
        self.instruments: dict[tuple[str, str], Instrument] = {}
        """(exchange, normalized symbol) → its metadata."""
        self.contracts: dict[tuple[str, str], Contract] = {}
        """(exchange, normalized symbol) → its Contract, for symbols whose amounts are contracts."""
        self._loaded: set[tuple[str, str]] = set()
        self._wake = trio.Event()
        self._loads = 0
        self._failures = 0
        self._last_loaded_at: int | None = None
        self._last_error: str | None = None

    def loaded(self, exchange: str, market: str) -> bool:
        """True once the market's metadata has been asked for and answered (or the venue needs none)."""
        return (exchange, market) in self._loaded

    def request_refresh(self) -> None:
        """Load again now (the configuration changed)."""
        self._wake.set()

    def statistics(self) -> CatalogStatistics:
        return CatalogStatistics(
            self.name,
            len(self.instruments),
            len(self.contracts),
            self._loads,
            self._failures,
            self._last_loaded_at,
            self._last_error,
        )

    def loader(self) -> InstrumentLoader:
        """A new actor keeping this catalog loaded (what it loaded outlives the actor)."""
        return InstrumentLoader(self)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load now, then every `refresh_s` (`retry_s` after a failure), until cancelled."""
        # Ready at once: feeds must not wait for REST; until the metadata arrives `/markets` says so.
        task_status.started()
        while True:
            complete = await self.refresh()
            with trio.move_on_after(self._refresh_s if complete else self._retry_s):
                await self._wake.wait()
            self._wake = trio.Event()

    async def refresh(self) -> bool:
        """Load every configured market once; False if any failed (it is tried again sooner)."""
        complete = True
        for entry in self._markets():
            venue = exchanges.venue(entry.exchange)
            client = self._clients.get((entry.exchange, entry.market))
            if client is None:
                continue
            try:
                found = await venue.instruments(entry.market, list(entry.symbols), _fetch(client))
            except (RestError, ValueError) as exc:
                complete = False
                self._failures += 1
                self._last_error = f"{entry.exchange} {entry.market}: {exc}"
                log.warning(
                    "instrument metadata not loaded; retrying later",
                    extra={"exchange": entry.exchange, "market": entry.market, "error": str(exc)},
                )
                continue
            self._loads += 1
            self._last_loaded_at = now_us()
            self._loaded.add((entry.exchange, entry.market))
            for instrument in found:
                symbol = entry.symbols.get(instrument.native)
                if symbol is None:
                    continue
                key = (entry.exchange, symbol)
                self.instruments[key] = instrument
                if instrument.amount_unit == "contracts" and instrument.contract_value is not None:
                    self.contracts[key] = Contract(instrument.contract_value, instrument.inverse)
                else:
                    self.contracts.pop(key, None)
        return complete


class InstrumentLoader:
    """The supervised actor of an `InstrumentCatalog` (a fresh one per (re)start)."""

    def __init__(self, catalog: InstrumentCatalog) -> None:
        self.name = catalog.name
        self._catalog = catalog

        self._scope = trio.CancelScope()

    def request_stop(self) -> None:
        """Stop now: nothing to flush (what was loaded stays in the catalog)."""
        self._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self._scope:
            await self._catalog.run(task_status=task_status)

    def statistics(self) -> CatalogStatistics:
        return self._catalog.statistics()


def _fetch(client: RestClient) -> Fetch:
    async def fetch(request: RestRequest) -> bytes:
        return await client.get(request.path, request.params, request.weight)

    return fetch
