"""A look-alike symbol in a query (a Cyrillic `В`, a long `ſ` that `str.upper` makes an `S`) is a 400
`bad_symbol` naming the character, over HTTP and MCP: never an "unknown symbol" that reads exactly like a
configured one, and never the configured market's data. The same for asset= and quotes= codes."""

from __future__ import annotations

from pathlib import Path

import httpx

from marketflow.daemon import Daemon
from marketflow.sim import SimServer
from tests.api.test_assets import run
from tests.api.test_mcp import modern

T = "/collectors/trades"
VE = "U+0412 (CYRILLIC CAPITAL LETTER VE)"
LONG_S = "U+017F (LATIN SMALL LETTER LONG S)"


async def test_look_alike_symbols_are_a_400_naming_the_character(tmp_path: Path) -> None:
    async def body(daemon: Daemon, sim: SimServer, client: httpx.AsyncClient) -> None:
        cases = [
            (T, {"exchange": "okx", "symbol": "\u0412TC-USDT"}, VE),
            (T, {"exchange": "okx", "market": "spot", "symbol": "\u0412TC-USDT"}, VE),
            (T, {"exchange": "okx", "market": "swap", "symbol": "BTC-U\u017fDT-SWAP"}, LONG_S),
            (T, {"exchange": "okx", "symbol": "btc-u\u017fdt"}, LONG_S),  # upper-cased: BTC-USDT
            (T, {"exchange": "bybit", "market": "spot", "symbol": "BTCU\u017fDT"}, LONG_S),
            ("/candles", {"exchange": "okx", "symbol": "BTC-USD-PERP\u00a0"}, "U+00A0 (NO-BREAK SPACE)"),
            ("/gaps", {"symbol": "BTC-U\u017fDT"}, LONG_S),  # without exchange=, matched as written
        ]
        for path, params, named in cases:
            response = await client.get(path, params=params)
            assert response.status_code == 400, (path, params, response.text)
            got = response.json()
            assert (got["error"], got["param"]) == ("bad_symbol", "symbol"), got
            assert named in got["detail"] and "ASCII" in got["detail"], got
        # asset= and quotes= are codes matched upper-cased the same way.
        for params, param, code, named in (
            ({"asset": "\u0412TC"}, "asset", "bad_asset", VE),
            ({"asset": "btc", "quotes": "u\u017fdt"}, "quotes", "bad_quotes", LONG_S),
        ):
            response = await client.get("/order-flow", params=params)
            assert response.status_code == 400, (params, response.text)
            got = response.json()
            assert (got["error"], got["param"]) == (code, param) and named in got["detail"], got
        # The same symbols written in ASCII are the configured markets.
        for params in ({"exchange": "okx", "symbol": "BTC-USDT"}, {"exchange": "okx", "symbol": "btc-usdt"}):
            response = await client.get(T, params=params)
            assert response.status_code == 200 and response.json()["trades"], response.text
        # MCP arguments take the same path.
        call = {"name": "get_recent_trades", "arguments": {"exchange": "okx", "symbol": "\u0412TC-USDT"}}
        result = (await client.post("/mcp", **modern("tools/call", call, name="get_recent_trades"))).json()
        assert result["result"]["isError"] is True
        text = result["result"]["content"][0]["text"]
        assert "'symbol' (bad_symbol)" in text and VE in text, text

    await run(tmp_path, body, seed=7)
