"""marketflow.config: TOML -> typed Config, every problem reported as `PATH:LINE: key.path: reason`."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import attrs
import pytest

from marketflow.config import (
    AnalyticsConfig,
    BooksConfig,
    Config,
    ConfigError,
    ConfigIssue,
    DaemonConfig,
    FeedConfig,
    HttpConfig,
    StorageConfig,
    SupervisorConfig,
    default_config,
    load_config,
    parse_config,
    resolve_config_path,
)

SHIPPED = Path(__file__).resolve().parent.parent / "configs" / "marketflow.toml"
NO_ENV: dict[str, str] = {}
FEED = '[[feeds]]\nexchange = "bybit"\nmarket = "spot"\nsymbols = ["BTCUSDT"]\n'
LISTEN = 'expected "host:port" with a port 0-65535 (IPv6 as "[::1]:8000")'
URLS = "use sqlite:///PATH, sqlite:///:memory: or postgresql://USER@HOST/DB (postgresql+asyncpg:// too)"
INTERVAL = 'must be a number and a unit s|m|h|d, e.g. "1s", "15m", "1h", "1d"'
EXACT = 'write decimals as strings, e.g. "10", so they stay exact'
DECIMAL = 'must be a decimal > 0 written as a string, e.g. "10"'


def issues(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="m.toml", env=NO_ENV if env is None else env)
    assert str(caught.value) == "\n".join(str(issue) for issue in caught.value.issues)
    return [str(issue) for issue in caught.value.issues]


def parse(text: str, env: dict[str, str] | None = None) -> Config:
    return parse_config(text, source="m.toml", env=NO_ENV if env is None else env)


# Each case: a whole file, and exactly the issues it must produce, in file order.
ERROR_CASES: dict[str, tuple[str, list[str]]] = {
    # unknown keys, wrong shapes
    "unknown top-level key": (
        '[deamon]\nlog_level = "info"\n',
        ["m.toml:1: deamon: unknown key, did you mean 'daemon'?"],
    ),
    "unknown key without a close match": (
        '[http]\nlisten = "127.0.0.1:1"\nfrobnicate = 1\n',
        [
            "m.toml:3: http.frobnicate: unknown key; allowed: listen, public_reads, trades_ring, "
            "allowed_hosts, api_docs, max_connections, read_timeout_s, idle_timeout_s, query_timeout_s, "
            "max_storage_queries"
        ],
    ),
    "unknown feed key": (
        '[[feeds]]\nexchange = "bybit"\nmarket = "spot"\nsymbol = ["BTCUSDT"]\n',
        [
            'm.toml:1: feeds[0].symbols: required key is missing, e.g. symbols = ["BTCUSDT"]',
            "m.toml:4: feeds[0].symbol: unknown key, did you mean 'symbols'?",
        ],
    ),
    "table of the wrong type": (
        'storage = "sqlite:///x.db"\n',
        ['m.toml:1: storage: must be a table ([storage]), got string "sqlite:///x.db"'],
    ),
    # [daemon]
    "log_level": (
        '[daemon]\nlog_level = "verbose"\n',
        ['m.toml:2: daemon.log_level: must be one of debug, info, warning, error, got string "verbose"'],
    ),
    "log_format": (
        '[daemon]\nlog_format = "xml"\n',
        ['m.toml:2: daemon.log_format: must be one of console, json, got string "xml"'],
    ),
    "state_dir empty": (
        '[daemon]\nstate_dir = ""\n',
        ['m.toml:2: daemon.state_dir: must be a non-empty string, got string ""'],
    ),
    "shutdown_timeout_s zero": (
        "[daemon]\nshutdown_timeout_s = 0\n",
        ["m.toml:2: daemon.shutdown_timeout_s: must be a number of seconds > 0, got integer 0"],
    ),
    "a boolean is not a number": (
        "[daemon]\nshutdown_timeout_s = true\n",
        ["m.toml:2: daemon.shutdown_timeout_s: must be a number of seconds > 0, got boolean true"],
    ),
    "a string is not a number": (
        '[daemon]\nshutdown_timeout_s = "10"\n',
        ['m.toml:2: daemon.shutdown_timeout_s: must be a number of seconds > 0, got string "10"'],
    ),
    "infinity is not a timeout": (
        "[daemon]\nshutdown_timeout_s = inf\n",
        ["m.toml:2: daemon.shutdown_timeout_s: must be a number of seconds > 0, got float Infinity"],
    ),
    "read_coalesce_ms too long": (
        "[daemon]\nread_coalesce_ms = 80\n",
        ["m.toml:2: daemon.read_coalesce_ms: must be a number of milliseconds from 0 to 50, got integer 80"],
    ),
    "read_coalesce_ms negative": (
        "[daemon]\nread_coalesce_ms = -1\n",
        ["m.toml:2: daemon.read_coalesce_ms: must be a number of milliseconds from 0 to 50, got integer -1"],
    ),
    "channel_capacity zero": (
        "[daemon]\nchannel_capacity = 0\n",
        ["m.toml:2: daemon.channel_capacity: must be an integer >= 1, got integer 0"],
    ),
    "a float is not an integer": (
        "[daemon]\nchannel_capacity = 256.0\n",
        ["m.toml:2: daemon.channel_capacity: must be an integer >= 1, got float 256.0"],
    ),
    # [http]
    "listen without a port": (
        '[http]\nlisten = "localhost"\n',
        [f'm.toml:2: http.listen: no port; {LISTEN}, got string "localhost"'],
    ),
    "listen with IPv6 unbracketed": (
        '[http]\nlisten = "::1:8000"\n',
        [
            "m.toml:2: http.listen: bad host '::1' (write IPv6 addresses in brackets); "
            f'{LISTEN}, got string "::1:8000"'
        ],
    ),
    "listen with a bad IPv6 address": (
        '[http]\nlisten = "[::g]:8000"\n',
        [f"m.toml:2: http.listen: '::g' is not an IPv6 address; {LISTEN}, got string \"[::g]:8000\""],
    ),
    "listen port out of range": (
        '[http]\nlisten = "0.0.0.0:65536"\n',
        [f'm.toml:2: http.listen: port 65536 is out of range; {LISTEN}, got string "0.0.0.0:65536"'],
    ),
    "listen without a host": (
        '[http]\nlisten = ":8000"\n',
        [f'm.toml:2: http.listen: no host; {LISTEN}, got string ":8000"'],
    ),
    "listen as a number": (
        "[http]\nlisten = 8000\n",
        [f"m.toml:2: http.listen: {LISTEN}, got integer 8000"],
    ),
    "public_reads not a boolean": (
        '[http]\npublic_reads = "yes"\n',
        ['m.toml:2: http.public_reads: must be true or false, got string "yes"'],
    ),
    "trades_ring below 1": (
        "[http]\ntrades_ring = 0\n",
        ["m.toml:2: http.trades_ring: must be an integer >= 1, got integer 0"],
    ),
    "allowed_hosts with a port": (
        '[http]\nallowed_hosts = ["ok.example", "mf.example:443"]\n',
        [
            "m.toml:2: http.allowed_hosts: must be an array of host names or IP addresses, e.g. "
            '["marketflow.example.com"] (no scheme, port or path), got string "mf.example:443"'
        ],
    ),
    "allowed_hosts not an array": (
        '[http]\nallowed_hosts = "mf.example"\n',
        [
            "m.toml:2: http.allowed_hosts: must be an array of host names or IP addresses, e.g. "
            '["marketflow.example.com"], got string "mf.example"'
        ],
    ),
    "api_docs not a boolean": (
        "[http]\napi_docs = 1\n",
        ["m.toml:2: http.api_docs: must be true or false, got integer 1"],
    ),
    # [storage]
    "storage url scheme (password not echoed)": (
        '[storage]\nurl = "mysql://root:secret@db/market"\n',
        [f"m.toml:2: storage.url: unsupported database URL scheme 'mysql'; {URLS}"],
    ),
    "sqlite url with two slashes": (
        '[storage]\nurl = "sqlite://x.db"\n',
        [
            "m.toml:2: storage.url: a SQLite URL is sqlite:/// and a path "
            f"(sqlite:////abs/path.db when absolute); {URLS}"
        ],
    ),
    "sqlite url without a path": (
        '[storage]\nurl = "sqlite:///"\n',
        [
            "m.toml:2: storage.url: a SQLite URL is sqlite:/// and a path "
            f"(sqlite:////abs/path.db when absolute); {URLS}"
        ],
    ),
    "a path is not a url": (
        '[storage]\nurl = "./var/x.db"\n',
        [f"m.toml:2: storage.url: not a database URL; {URLS}"],
    ),
    "batch_max zero": (
        "[storage]\nbatch_max = 0\n",
        ["m.toml:2: storage.batch_max: must be an integer >= 1, got integer 0"],
    ),
    "a boolean is not an integer": (
        "[storage]\nbatch_max = true\n",
        ["m.toml:2: storage.batch_max: must be an integer >= 1, got boolean true"],
    ),
    "flush_interval_s zero": (
        "[storage]\nflush_interval_s = 0\n",
        ["m.toml:2: storage.flush_interval_s: must be a number of seconds > 0, got integer 0"],
    ),
    "buffer_max negative": (
        "[storage]\nbuffer_max = -1\n",
        ["m.toml:2: storage.buffer_max: must be an integer >= 0, got integer -1"],
    ),
    "retention_days negative": (
        "[storage]\nretention_days = -1\n",
        ["m.toml:2: storage.retention_days: must be an integer >= 0, got integer -1"],
    ),
    "retention_days is whole days": (
        "[storage]\nretention_days = 1.5\n",
        ["m.toml:2: storage.retention_days: must be an integer >= 0, got float 1.5"],
    ),
    # [supervisor]
    "backoff_initial_s zero": (
        "[supervisor]\nbackoff_initial_s = 0\n",
        ["m.toml:2: supervisor.backoff_initial_s: must be a number of seconds > 0, got integer 0"],
    ),
    "backoff_max_s below backoff_initial_s": (
        "[supervisor]\nbackoff_initial_s = 5\nbackoff_max_s = 1.5\n",
        ["m.toml:3: supervisor.backoff_max_s: must be >= backoff_initial_s (5), got 1.5"],
    ),
    "default backoff_max_s below backoff_initial_s": (
        "[supervisor]\nbackoff_initial_s = 60\n",
        ["m.toml:1: supervisor.backoff_max_s: must be >= backoff_initial_s (60), got 30 (the default)"],
    ),
    "circuit_failures zero": (
        "[supervisor]\ncircuit_failures = 0\n",
        ["m.toml:2: supervisor.circuit_failures: must be an integer >= 1, got integer 0"],
    ),
    "circuit_window_s zero": (
        "[supervisor]\ncircuit_window_s = 0\n",
        ["m.toml:2: supervisor.circuit_window_s: must be a number of seconds > 0, got integer 0"],
    ),
    "circuit_open_s negative": (
        "[supervisor]\ncircuit_open_s = -1\n",
        ["m.toml:2: supervisor.circuit_open_s: must be a number of seconds > 0, got integer -1"],
    ),
    # [[feeds]]
    "feed required keys missing: the [[feeds]] line": (
        '[daemon]\n\n[[feeds]]\nname = "x"\n',
        [
            'm.toml:3: feeds[0].exchange: required key is missing, e.g. exchange = "bybit"',
            'm.toml:3: feeds[0].market: required key is missing, e.g. market = "spot"',
            'm.toml:3: feeds[0].symbols: required key is missing, e.g. symbols = ["BTCUSDT"]',
        ],
    ),
    "unknown exchange": (
        '[[feeds]]\nexchange = "nowhere"\nmarket = "spot"\nsymbols = ["BTCUSDT"]\n',
        [
            "m.toml:2: feeds[0].exchange: must be one of bybit, binance, okx, coinbase, kraken, "
            'got string "nowhere"'
        ],
    ),
    "unknown exchange and market": (
        '[[feeds]]\nexchange = "nowhere"\nmarket = "options"\nsymbols = ["BTCUSDT"]\n',
        [
            "m.toml:2: feeds[0].exchange: must be one of bybit, binance, okx, coinbase, kraken, "
            'got string "nowhere"',
            "m.toml:3: feeds[0].market: must be one of spot, linear, usdm, swap, futures, "
            'got string "options"',
        ],
    ),
    "market of the other exchange (bybit)": (
        '[[feeds]]\nexchange = "bybit"\nmarket = "usdm"\nsymbols = ["BTCUSDT"]\n',
        ['m.toml:3: feeds[0].market: must be one of spot, linear for bybit, got string "usdm"'],
    ),
    "market of the other exchange (binance)": (
        '[[feeds]]\nexchange = "binance"\nmarket = "linear"\nsymbols = ["BTCUSDT"]\n',
        ['m.toml:3: feeds[0].market: must be one of spot, usdm for binance, got string "linear"'],
    ),
    "symbols empty": (
        '[[feeds]]\nexchange = "bybit"\nmarket = "spot"\nsymbols = []\n',
        [
            "m.toml:4: feeds[0].symbols: must be a non-empty array of symbols, "
            'e.g. ["BTCUSDT"], got an empty array'
        ],
    ),
    "symbols not an array": (
        '[[feeds]]\nexchange = "bybit"\nmarket = "spot"\nsymbols = "BTCUSDT"\n',
        [
            "m.toml:4: feeds[0].symbols: must be a non-empty array of symbols, "
            'e.g. ["BTCUSDT"], got string "BTCUSDT"'
        ],
    ),
    "bad symbol elements, each on its own line": (
        '[[feeds]]\nexchange = "bybit"\nmarket = "spot"\nsymbols = [\n  "BTCUSDT",\n  "XYZ",\n  7,\n'
        '  "btc-usdt",  # same as BTCUSDT\n  "BTC-USDT-PERP",\n]\n',
        [
            "m.toml:6: feeds[0].symbols[1]: cannot tell base and quote apart in symbol 'XYZ'; "
            "write a spot symbol as BTCUSDT or BTC-USDT",
            'm.toml:7: feeds[0].symbols[2]: must be a symbol string like "BTCUSDT", got integer 7',
            "m.toml:8: feeds[0].symbols[3]: duplicate of feeds[0].symbols[0] (both are BTC-USDT)",
            "m.toml:9: feeds[0].symbols[4]: 'BTC-USDT-PERP' is not a spot symbol like BTC-USDT; "
            "write a spot symbol as BTCUSDT or BTC-USDT",
        ],
    ),
    "symbol with characters a symbol cannot have": (
        '[[feeds]]\nexchange = "bybit"\nmarket = "spot"\nsymbols = ["BTC/USDT"]\n',
        [
            "m.toml:4: feeds[0].symbols[0]: 'BTC/USDT' holds characters other than letters and digits; "
            "write a spot symbol as BTCUSDT or BTC-USDT"
        ],
    ),
    "perpetual symbol of the wrong form": (
        '[[feeds]]\nexchange = "binance"\nmarket = "usdm"\nsymbols = ["ETHUSDT", "BTC-USDT-SPOT"]\n',
        [
            "m.toml:4: feeds[0].symbols[1]: 'BTC-USDT-SPOT' is not a perpetual symbol like BTC-USDT-PERP; "
            "write a usdm symbol as BTCUSDT or BTC-USDT-PERP"
        ],
    ),
    "channels empty": (
        FEED + "channels = []\n",
        [
            "m.toml:5: feeds[0].channels: must be a non-empty array of channels "
            "(trades, book, ticker, derivatives, liquidations), got an empty array"
        ],
    ),
    "unknown channel": (
        FEED + 'channels = ["trades", "quotes"]\n',
        [
            "m.toml:5: feeds[0].channels[1]: must be one of trades, book, ticker, derivatives, "
            'liquidations, got string "quotes"'
        ],
    ),
    "channel the market does not offer": (
        FEED + 'channels = ["trades", "derivatives", "liquidations"]\n',
        [
            "m.toml:5: feeds[0].channels[1]: bybit spot has no 'derivatives' channel; "
            "it offers trades, book, ticker",
            "m.toml:5: feeds[0].channels[2]: bybit spot has no 'liquidations' channel; "
            "it offers trades, book, ticker",
        ],
    ),
    "derivatives sample interval": (
        "[derivatives]\nsample_interval_s = 0\n",
        ["m.toml:2: derivatives.sample_interval_s: must be a number of seconds > 0, got integer 0"],
    ),
    "books snapshot depth": (
        "[books]\nsnapshot_depth = 0\n",
        ["m.toml:2: books.snapshot_depth: must be an integer >= 1, got integer 0"],
    ),
    "books unknown key": (
        "[books]\nsnapshot_every = 5\n",
        ["m.toml:2: books.snapshot_every: unknown key, did you mean 'snapshot_depth'?"],
    ),
    "duplicate channel": (
        FEED + 'channels = ["trades", "trades"]\n',
        ["m.toml:5: feeds[0].channels[1]: duplicate channel 'trades'"],
    ),
    "book_depth for bybit": (
        FEED + "book_depth = 5\n",
        ["m.toml:5: feeds[0].book_depth: must be one of 1, 50, 200, 1000 for bybit, got 5"],
    ),
    "book_depth for binance": (
        '[[feeds]]\nexchange = "binance"\nmarket = "spot"\nsymbols = ["BTCUSDT"]\nbook_depth = 200\n',
        [
            "m.toml:5: feeds[0].book_depth: must be one of 5, 10, 20, 50, 100, 500, 1000, 5000 for binance, "
            "got 200"
        ],
    ),
    "ws_url scheme": (
        FEED + 'ws_url = "https://stream.bybit.com"\n',
        [
            "m.toml:5: feeds[0].ws_url: must be a URL starting ws://HOST... or wss://HOST..., "
            'got string "https://stream.bybit.com"'
        ],
    ),
    "rest_url scheme": (
        FEED + 'rest_url = "wss://api.bybit.com"\n',
        [
            "m.toml:5: feeds[0].rest_url: must be a URL starting http://HOST... or https://HOST..., "
            'got string "wss://api.bybit.com"'
        ],
    ),
    "feed name pattern": (
        FEED + 'name = "Bybit Spot"\n',
        [
            "m.toml:5: feeds[0].name: must match [a-z0-9][a-z0-9_-]* (e.g. "
            'bybit-spot-2), got string "Bybit Spot"'
        ],
    ),
    "stale_timeout_s zero": (
        FEED + "stale_timeout_s = 0\n",
        ["m.toml:5: feeds[0].stale_timeout_s: must be a number of seconds > 0, got integer 0"],
    ),
    "ping_interval_s string": (
        FEED + 'ping_interval_s = "20"\n',
        ['m.toml:5: feeds[0].ping_interval_s: must be a number of seconds > 0, got string "20"'],
    ),
    "two feeds with the same default name": (
        FEED + "\n" + FEED,
        [
            "m.toml:6: feeds[1].name: feeds[0] and feeds[1] are both named 'bybit-spot'; "
            "the name defaults to exchange-market, so give one of them a distinct name"
        ],
    ),
    "two feeds with the same explicit name": (
        FEED + 'name = "main"\n\n[[feeds]]\nexchange = "binance"\nmarket = "spot"\nsymbols = ["BTCUSDT"]\n'
        'name = "main"\n',
        ["m.toml:11: feeds[1].name: feeds[0] and feeds[1] are both named 'main'; feed names must be unique"],
    ),
    # the same check of a symbol's text as the symbols API's (a venue may be lenient about letters)
    "look-alike symbols: Cyrillic, fullwidth, whitespace": (
        '[[feeds]]\nexchange = "bybit"\nmarket = "spot"\nsymbols = [\n  "BTCUSD\u0422",\n'
        '  "\uff22\uff34\uff23USDT",\n  " ETHUSDT",\n]\n'
        '[[feeds]]\nexchange = "okx"\nmarket = "spot"\nsymbols = ["\u0412TC-USDT"]\n',
        [
            "m.toml:5: feeds[0].symbols[0]: 'BTCUSD\u0422' holds the non-ASCII character U+0422 "
            "(CYRILLIC CAPITAL LETTER TE); symbols are ASCII letters and digits; "
            "write a spot symbol as BTCUSDT or BTC-USDT",
            "m.toml:6: feeds[0].symbols[1]: '\uff22\uff34\uff23USDT' holds the non-ASCII character U+FF22 "
            "(FULLWIDTH LATIN CAPITAL LETTER B); symbols are ASCII letters and digits; "
            "write a spot symbol as BTCUSDT or BTC-USDT",
            "m.toml:7: feeds[0].symbols[2]: ' ETHUSDT' holds the character ' '; "
            "write a spot symbol as BTCUSDT or BTC-USDT",
            "m.toml:12: feeds[1].symbols[0]: '\u0412TC-USDT' holds the non-ASCII character U+0412 "
            "(CYRILLIC CAPITAL LETTER VE); symbols are ASCII letters and digits; "
            "write a spot symbol as BTC-USDT or BTC-USDT",
        ],
    ),
    "a look-alike bin_size symbol": (
        '[analytics.bin_size]\n"\u0412TC-USDT" = "10"\n',
        [
            "m.toml:2: analytics.bin_size.\"\u0412TC-USDT\": '\u0412TC-USDT' holds the non-ASCII "
            "character U+0412 (CYRILLIC CAPITAL LETTER VE); symbols are ASCII letters and digits; "
            "write a normalized symbol, e.g. 'BTC-USDT'",
        ],
    ),
    "feeds written as a table": (
        '[feeds]\nexchange = "bybit"\n',
        ["m.toml:1: feeds: must be an array of tables, one [[feeds]] each, got a table"],
    ),
    # [analytics]
    "candle intervals": (
        '[analytics]\ncandle_intervals = ["1m", "60s", "1M", "0m", "90", 5]\n',
        [
            "m.toml:2: analytics.candle_intervals[1]: duplicate of analytics.candle_intervals[0] "
            "(both are 60 seconds)",
            f'm.toml:2: analytics.candle_intervals[2]: {INTERVAL}, got string "1M"',
            f'm.toml:2: analytics.candle_intervals[3]: {INTERVAL}, got string "0m"',
            f'm.toml:2: analytics.candle_intervals[4]: {INTERVAL}, got string "90"',
            f"m.toml:2: analytics.candle_intervals[5]: {INTERVAL}, got integer 5",
        ],
    ),
    "candle intervals not an array": (
        '[analytics]\ncandle_intervals = "1m"\n',
        [
            "m.toml:2: analytics.candle_intervals: must be an array of intervals, "
            'e.g. ["1m", "5m"], got string "1m"'
        ],
    ),
    "value_area above 1": (
        "[analytics]\nvalue_area = 1.5\n",
        [
            "m.toml:2: analytics.value_area: must be a fraction > 0 and <= 1, e.g. "
            '0.70 or "0.70", got float 1.5'
        ],
    ),
    "value_area zero": (
        '[analytics]\nvalue_area = "0"\n',
        [
            "m.toml:2: analytics.value_area: must be a fraction > 0 and <= 1, e.g. "
            '0.70 or "0.70", got string "0"'
        ],
    ),
    "a TOML float for a decimal": (
        "[analytics]\nlarge_trade_notional = 100000.0\n",
        [f"m.toml:2: analytics.large_trade_notional: {EXACT}"],
    ),
    "decimal zero": (
        '[analytics]\nlarge_trade_notional = "0"\n',
        [f'm.toml:2: analytics.large_trade_notional: {DECIMAL}, got string "0"'],
    ),
    "decimal not a number": (
        '[analytics]\nlarge_trade_notional = "lots"\n',
        [f'm.toml:2: analytics.large_trade_notional: {DECIMAL}, got string "lots"'],
    ),
    "decimal boolean": (
        "[analytics]\nlarge_trade_notional = true\n",
        [f"m.toml:2: analytics.large_trade_notional: {DECIMAL}, got boolean true"],
    ),
    "bin_size keys and values": (
        '[analytics.bin_size]\n"BTC-USDT" = 10.5\nBTCUSDT = "1"\n"eth-usdt" = "1"\n"BTC-USD T" = "1"\n'
        '"SOL-USDT" = "-1"\n"ETH-USDT-PERP" = "0.5"\n',
        [
            f'm.toml:2: analytics.bin_size."BTC-USDT": {EXACT}',
            "m.toml:3: analytics.bin_size.BTCUSDT: must be a normalized symbol, "
            "e.g. 'BTC-USDT' or 'BTC-USDT-PERP'",
            "m.toml:4: analytics.bin_size.\"eth-usdt\": must be a normalized symbol, e.g. 'ETH-USDT'",
            'm.toml:5: analytics.bin_size."BTC-USD T": must be a normalized '
            "symbol, e.g. 'BTC-USDT' or 'BTC-USDT-PERP'",
            f'm.toml:6: analytics.bin_size."SOL-USDT": {DECIMAL}, got string "-1"',
        ],
    ),
    "bin_size not a table": (
        '[analytics]\nbin_size = "10"\n',
        ['m.toml:2: analytics.bin_size: must be a table ([analytics.bin_size]), got string "10"'],
    ),
    # TOML itself
    "TOML syntax error": (
        '[daemon]\nlog_level = "info"\nlog_format = \n',
        ["m.toml:3: <toml>: invalid TOML: Invalid value (column 14)"],
    ),
    "TOML error at the end of the file": (
        '[daemon]\nlog_level = "info"\nstate_dir = """./var\n',
        ["m.toml:3: <toml>: invalid TOML: Unterminated string at the end of the file"],
    ),
}


@pytest.mark.parametrize(("text", "expected"), ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_every_error_kind_names_its_line_key_and_reason(text: str, expected: list[str]) -> None:
    assert issues(text) == expected


def test_every_problem_in_a_file_is_reported_in_file_order() -> None:
    text = (
        "[daemon]\n"  # 1
        'log_level = "loud"\n'  # 2
        "[storage]\n"  # 3
        "batch_max = 0\n"  # 4
        "[[feeds]]\n"  # 5
        'exchange = "bybit"\n'  # 6
        'market = "linear"\n'  # 7
        'symbols = ["BTCUSDT", "nope"]\n'  # 8
        "[[feeds]]\n"  # 9
        'exchange = "binance"\n'  # 10
        "[analytics]\n"  # 11
        "value_area = 2\n"  # 12
        "color = 1\n"  # 13
    )
    assert [issue.split(": ")[0:2] for issue in issues(text)] == [
        ["m.toml:2", "daemon.log_level"],
        ["m.toml:4", "storage.batch_max"],
        ["m.toml:8", "feeds[0].symbols[1]"],
        ["m.toml:9", "feeds[1].market"],
        ["m.toml:9", "feeds[1].symbols"],
        ["m.toml:12", "analytics.value_area"],
        ["m.toml:13", "analytics.color"],
    ]


def test_lines_are_found_through_tricky_toml() -> None:
    text = (
        '# [daemon] in a comment, and log_level = "x"\n'  # 1
        'motd = """\n'  # 2: an unknown key whose value spans lines that look like TOML
        "[daemon]\n"  # 3
        'log_level = "inside a string"\n'  # 4
        '"""\n'  # 5
        'daemon . "log_format" = "xml"  # dotted, quoted\n'  # 6
        "http = { listen = 'no-port', public_reads = 1 }\n"  # 7
        "feeds = [\n"  # 8
        '  { exchange = "bybit", market = "spot", symbols = ["BTCUSDT"] },\n'  # 9
        '  { exchange = "bybit", market = "spot", name = "b", symbols = [\n'  # 10
        '      "ETHUSDT", "ETH\\"USDT",\n'  # 11
        "  ] },\n"  # 12
        "]\n"  # 13
        "\r\n"  # 14
        "[storage]\r\n"  # 15
        "batch_max = [[1, 2], [3]]\r\n"  # 16
        "buffer_max = '''a''' # ]\r\n"  # 17
        "url = 'sqlite:///x' \r\n"  # 18
        "flush_interval_s = 1979-05-27T07:32:00Z\n"  # 19
    )
    assert [issue.split(": ")[0:2] for issue in issues(text)] == [
        ["m.toml:2", "motd"],
        ["m.toml:6", "daemon.log_format"],
        ["m.toml:7", "http.listen"],
        ["m.toml:7", "http.public_reads"],
        ["m.toml:11", "feeds[1].symbols[1]"],
        ["m.toml:16", "storage.batch_max"],
        ["m.toml:17", "storage.buffer_max"],
        ["m.toml:19", "storage.flush_interval_s"],
    ]


def test_sub_tables_of_a_feed_resolve_to_that_feed() -> None:
    text = FEED + "[[feeds]]\n" + FEED.partition("\n")[2].replace("spot", "linear") + "[feeds.extra]\nx = 1\n"
    assert issues(text) == [
        "m.toml:9: feeds[1].extra: unknown key; allowed: " + ", ".join(attrs.fields_dict(FeedConfig))
    ]


def test_defaults_are_complete() -> None:
    spot = FeedConfig("bybit", "spot", ("BTC-USDT", "ETH-USDT"))
    linear = FeedConfig("bybit", "linear", ("BTC-USDT-PERP", "ETH-USDT-PERP"))
    binance_spot = FeedConfig("binance", "spot", ("BTC-USDT", "ETH-USDT"))
    usdm = FeedConfig("binance", "usdm", ("BTC-USDT-PERP", "ETH-USDT-PERP"))
    okx_spot = FeedConfig("okx", "spot", ("BTC-USDT", "ETH-USDT"), book_depth=400)
    okx_swap = FeedConfig("okx", "swap", ("BTC-USDT-PERP", "BTC-USD-PERP"), book_depth=400)
    coinbase = FeedConfig("coinbase", "spot", ("BTC-USD", "ETH-USD"), book_depth=0)
    kraken_spot = FeedConfig("kraken", "spot", ("BTC-USD", "ETH-USD"), book_depth=10)
    assert default_config(NO_ENV) == Config(
        daemon=DaemonConfig("info", "console", "./var", 10.0, 256),
        http=HttpConfig("127.0.0.1:8000", False),
        storage=StorageConfig("sqlite:///./var/marketflow.db", 5000, 0.25, 1_000_000),
        supervisor=SupervisorConfig(0.5, 30.0, 10, 300.0, 60.0),
        feeds=(spot, linear, binance_spot, usdm, okx_spot, okx_swap, coinbase, kraken_spot),
        analytics=AnalyticsConfig(("1m", "5m", "1h"), Decimal("0.70"), Decimal("100000"), {}),
        source=None,
    )
    assert [f.name for f in (binance_spot, usdm)] == ["binance-spot", "binance-usdm"]
    assert (spot.name, spot.channels, spot.book_depth, spot.ws_url, spot.rest_url) == (
        "bybit-spot",
        ("trades", "book"),
        50,
        None,
        None,
    )
    assert (spot.stale_timeout_s, spot.ping_interval_s, spot.perpetual, linear.perpetual) == (
        30,
        20,
        False,
        True,
    )
    assert spot.max_message_mb == coinbase.max_message_mb == 16
    assert parse("") == attrs.evolve(default_config(NO_ENV), source="m.toml")
    hash(default_config(NO_ENV))  # usable as a dict key / in sets when diffing reloads


def test_types_of_parsed_values() -> None:
    text = FEED + "stale_timeout_s = 5\n[storage]\nflush_interval_s = 1\n[analytics]\nvalue_area = 0.70\n"
    config = parse(text)
    assert type(config.storage.flush_interval_s) is float
    assert type(config.feeds[0].stale_timeout_s) is float
    assert config.feeds[0].symbols == ("BTC-USDT",)
    # value_area is a ratio: a TOML float is accepted and read exactly from its text
    assert str(config.analytics.value_area) == "0.70"


def test_shipped_config_is_the_defaults() -> None:
    assert load_config(SHIPPED, env=NO_ENV) == attrs.evolve(default_config(NO_ENV), source=str(SHIPPED))


def test_shipped_config_documents_every_key() -> None:
    text = SHIPPED.read_text()
    for cls in (DaemonConfig, HttpConfig, StorageConfig, SupervisorConfig, FeedConfig, AnalyticsConfig):
        for name in attrs.fields_dict(cls):
            written = f"\n{name} = " in text or f"\n# {name} = " in text or f"\n[analytics.{name}]" in text
            assert written, f"{cls.__name__}.{name} is not in {SHIPPED.name}"


def test_native_and_normalized_symbols() -> None:
    text = (
        '[[feeds]]\nexchange = "bybit"\nmarket = "spot"\nsymbols = ["BTCUSDT", "eth-usdt", "SOLUSDC"]\n'
        '[[feeds]]\nexchange = "bybit"\nmarket = "linear"\nsymbols = '
        '["BTCUSDT", "ETH-USDT", "SOL-USDT-PERP"]\n'
        '[[feeds]]\nexchange = "binance"\nmarket = "usdm"\nsymbols = ["btcusdt"]\n'
        '[[feeds]]\nexchange = "binance"\nmarket = "spot"\nsymbols = ["ETHBTC"]\n'
        '[analytics.bin_size]\n"BTC-USDT" = "10"\n"ETH-USDT-PERP" = 1\n'
    )
    config = parse(text)
    assert [feed.symbols for feed in config.feeds] == [
        ("BTC-USDT", "ETH-USDT", "SOL-USDC"),
        ("BTC-USDT-PERP", "ETH-USDT-PERP", "SOL-USDT-PERP"),
        ("BTC-USDT-PERP",),
        ("ETH-BTC",),
    ]
    assert [feed.name for feed in config.feeds] == [
        "bybit-spot",
        "bybit-linear",
        "binance-usdm",
        "binance-spot",
    ]
    assert dict(config.analytics.bin_size) == {"BTC-USDT": Decimal("10"), "ETH-USDT-PERP": Decimal("1")}


def test_every_key_is_read() -> None:
    text = """
[daemon]
log_level = "debug"
log_format = "json"
state_dir = "/var/lib/marketflow"
shutdown_timeout_s = 3.5
channel_capacity = 8
[http]
listen = "[::1]:0"
public_reads = true
trades_ring = 99
[storage]
url = "postgresql+asyncpg://mf@db/market"
batch_max = 10
flush_interval_s = 0.5
buffer_max = 0
[supervisor]
backoff_initial_s = 1
backoff_max_s = 1
circuit_failures = 3
circuit_window_s = 9
circuit_open_s = 7
[books]
snapshot_interval_s = 2.5
snapshot_depth = 7
[[feeds]]
exchange = "binance"
market = "spot"
symbols = ["BTCUSDT"]
channels = ["trades"]
book_depth = 5000
ws_url = "ws://127.0.0.1:9000"
rest_url = "http://127.0.0.1:9000"
name = "bin_1"
stale_timeout_s = 0.5
ping_interval_s = 2
[analytics]
candle_intervals = ["15s", "4h", "1d"]
value_area = "1"
large_trade_notional = 250000
bin_size = { "BTC-USDT" = "0.5" }
"""
    config = parse(text)
    assert config == Config(
        DaemonConfig("debug", "json", "/var/lib/marketflow", 3.5, 8),
        HttpConfig("[::1]:0", True, 99),
        StorageConfig("postgresql+asyncpg://mf@db/market", 10, 0.5, 0),
        SupervisorConfig(1.0, 1.0, 3, 9.0, 7.0),
        (
            FeedConfig(
                "binance",
                "spot",
                ("BTC-USDT",),
                ("trades",),
                5000,
                "ws://127.0.0.1:9000",
                "http://127.0.0.1:9000",
                "bin_1",
                0.5,
                2.0,
            ),
        ),
        AnalyticsConfig(("15s", "4h", "1d"), Decimal("1"), Decimal("250000"), {"BTC-USDT": Decimal("0.5")}),
        source="m.toml",
        books=BooksConfig(2.5, 7),
    )
    assert (config.http.host, config.http.port) == ("::1", 0)


def test_retention_days_defaults_to_keeping_everything() -> None:
    assert StorageConfig().retention_days == 0 and parse("").storage.retention_days == 0
    assert parse("[storage]\nretention_days = 30\n").storage.retention_days == 30


def test_allowed_hosts_are_normalized() -> None:
    assert HttpConfig().allowed_hosts == () and HttpConfig().api_docs is False
    http = parse('[http]\nallowed_hosts = ["MF.Example.com.", "[::1]", "192.0.2.7"]\napi_docs = true\n').http
    assert http.allowed_hosts == ("mf.example.com", "::1", "192.0.2.7") and http.api_docs is True


def test_trades_ring_capacity() -> None:
    assert HttpConfig().trades_ring == 1_000 and parse("").http.trades_ring == 1_000
    assert parse("[http]\ntrades_ring = 50\n").http.trades_ring == 50


def test_listen_host_and_port() -> None:
    assert (HttpConfig().host, HttpConfig().port) == ("127.0.0.1", 8000)
    assert (HttpConfig("[::]:9100").host, HttpConfig("[::]:9100").port) == ("::", 9100)
    assert parse('[http]\nlisten = "localhost:65535"\n').http.port == 65535


def test_feeds_left_out_are_the_defaults_and_an_empty_list_is_none() -> None:
    assert parse("[daemon]\n").feeds == default_config(NO_ENV).feeds
    assert parse("feeds = []\n").feeds == ()


def test_same_exchange_and_market_twice_with_distinct_names() -> None:
    text = FEED + "\n" + FEED.replace("BTCUSDT", "ETHUSDT") + 'name = "bybit-spot-2"\n'
    assert [feed.name for feed in parse(text).feeds] == ["bybit-spot", "bybit-spot-2"]


def test_sqlite_database_follows_state_dir() -> None:
    assert (
        parse('[daemon]\nstate_dir = "/var/lib/mf/"\n').storage.url == "sqlite:////var/lib/mf/marketflow.db"
    )
    text = '[daemon]\nstate_dir = "/srv"\n[storage]\nurl = "sqlite:///:memory:"\n'
    assert parse(text).storage.url == "sqlite:///:memory:"


def test_storage_url_from_the_environment() -> None:
    env = {"MARKETFLOW_STORAGE_URL": "postgresql://mf@db/market"}
    assert parse('[storage]\nurl = "sqlite:///x.db"\n', env).storage.url == "postgresql://mf@db/market"
    assert default_config(env).storage.url == "postgresql://mf@db/market"
    assert parse("", {"MARKETFLOW_STORAGE_URL": ""}).storage.url == "sqlite:///./var/marketflow.db"


def test_bad_storage_url_from_the_environment_has_no_line() -> None:
    env = {"MARKETFLOW_STORAGE_URL": "redis://x"}
    assert issues("[daemon]\nlog_level = 1\n", env) == [
        "m.toml:2: daemon.log_level: must be one of debug, info, warning, error, got integer 1",
        f"m.toml: storage.url: from $MARKETFLOW_STORAGE_URL: unsupported database URL scheme 'redis'; {URLS}",
    ]
    with pytest.raises(ConfigError, match="MARKETFLOW_STORAGE_URL"):
        default_config(env)


def test_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKETFLOW_STORAGE_URL", "sqlite:///:memory:")
    assert parse_config("").storage.url == "sqlite:///:memory:"
    assert default_config().storage.url == "sqlite:///:memory:"


def test_load_config_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mf.toml"
    path.write_text('[http]\nlisten = "0.0.0.0:9000"\n')
    config = load_config(path, env=NO_ENV)
    assert (config.http.listen, config.source) == ("0.0.0.0:9000", str(path))
    path.write_text('[http]\nlisten = "0.0.0.0"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), env=NO_ENV)
    assert str(caught.value).startswith(f"{path}:2: http.listen: no port;")


def test_unreadable_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing, env=NO_ENV)
    assert caught.value.issues == [
        ConfigIssue(
            str(missing), None, "<file>", "cannot read the configuration file: No such file or directory"
        )
    ]
    assert (
        str(caught.value)
        == f"{missing}: <file>: cannot read the configuration file: No such file or directory"
    )
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"[daemon]\n\xff = 1\n")
    with pytest.raises(ConfigError, match=r"bin\.toml:2: <toml>: the file is not valid UTF-8"):
        load_config(binary, env=NO_ENV)


def test_resolve_config_path_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"MARKETFLOW_CONFIG": "/etc/marketflow/env.toml"}
    assert resolve_config_path(None, {}) is None
    (tmp_path / "marketflow.toml").write_text("")
    assert resolve_config_path(None, {}) == "marketflow.toml"
    assert os.path.isfile(resolve_config_path(None, {}) or "")
    assert resolve_config_path(None, env) == "/etc/marketflow/env.toml"
    assert resolve_config_path("cli.toml", env) == "cli.toml"
    assert resolve_config_path(None, {"MARKETFLOW_CONFIG": ""}) == "marketflow.toml"


def test_issue_and_error_text() -> None:
    assert str(ConfigIssue("a.toml", 3, "daemon.log_level", "bad")) == "a.toml:3: daemon.log_level: bad"
    assert str(ConfigIssue("a.toml", None, "storage.url", "bad")) == "a.toml: storage.url: bad"
    error = ConfigError([ConfigIssue("a", 1, "k", "x"), ConfigIssue("a", None, "j", "y")])
    assert str(error) == "a:1: k: x\na: j: y"


def test_configs_are_frozen() -> None:
    config = default_config(NO_ENV)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.daemon.log_level = "debug"  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.analytics.bin_size["BTC-USDT"] = Decimal(1)  # type: ignore[index]


def test_live_bars_bounds_the_engine_window() -> None:
    assert AnalyticsConfig().live_bars == 240 and parse("").analytics.live_bars == 240
    assert parse("[analytics]\nlive_bars = 30\n").analytics.live_bars == 30
    with pytest.raises(
        ConfigError, match=r"m.toml:2: analytics.live_bars: must be an integer >= 1, got integer 0"
    ):
        parse("[analytics]\nlive_bars = 0\n")
