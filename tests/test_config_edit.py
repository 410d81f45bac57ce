"""Symbol edits keep the TOML file's comments and formatting, and never leave it invalid."""

from __future__ import annotations

from pathlib import Path

import pytest

from marketflow.config_edit import EditError, edit_symbols

TEXT = """\
# my marketflow
[daemon]
log_level = "info"   # keep this comment

[[feeds]]
exchange = "bybit"
market = "spot"
# the symbols I trade
symbols = ["BTCUSDT", "ETHUSDT"]  # next to the array
channels = ["trades"]

[[feeds]]
exchange = "binance"
market = "usdm"
symbols = ["BTCUSDT"]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "marketflow.toml"
    path.write_text(TEXT)
    return path


def test_add_keeps_comments_and_order(config: Path) -> None:
    new = edit_symbols(config, exchange="bybit", market="spot", symbol="SOL-USDT", add=True, env={})
    text = config.read_text()
    assert 'symbols = ["BTCUSDT", "ETHUSDT", "SOL-USDT"]  # next to the array' in text
    assert (
        "# the symbols I trade" in text
        and "# keep this comment" in text
        and text.startswith("# my marketflow")
    )
    assert new.feeds[0].symbols == ("BTC-USDT", "ETH-USDT", "SOL-USDT")
    assert text.index("bybit") < text.index("binance")


def test_add_to_a_new_feed_appends_a_table(config: Path) -> None:
    new = edit_symbols(config, exchange="binance", market="spot", symbol="BTCUSDT", add=True, env={})
    assert [f.name for f in new.feeds] == ["bybit-spot", "binance-usdm", "binance-spot"]
    assert config.read_text().startswith(TEXT)  # everything before is untouched


def test_remove_and_remove_last_symbol(config: Path) -> None:
    new = edit_symbols(config, exchange="bybit", market="spot", symbol="ETH-USDT", add=False, env={})
    assert new.feeds[0].symbols == ("BTC-USDT",)
    assert 'symbols = ["BTCUSDT"]  # next to the array' in config.read_text()
    new = edit_symbols(config, exchange="binance", market="usdm", symbol="BTC-USDT-PERP", add=False, env={})
    assert [f.name for f in new.feeds] == ["bybit-spot"]
    assert "binance" not in config.read_text()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"exchange": "bybit", "market": "spot", "symbol": "BTC-USDT", "add": True}, "already collected"),
        ({"exchange": "bybit", "market": "spot", "symbol": "DOGE-USDT", "add": False}, "is not collected"),
        ({"exchange": "kraken", "market": "spot", "symbol": "BTC-USDT", "add": False}, "no feed for kraken"),
        ({"exchange": "kraken", "market": "spot", "symbol": "BTC-USDT", "add": True}, "would make"),
        ({"exchange": "bybit", "market": "spot", "symbol": "", "add": True}, "empty symbol"),
    ],
)
def test_refused_edits_leave_the_file_untouched(config: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(EditError, match=message):
        edit_symbols(config, env={}, **kwargs)
    assert config.read_text() == TEXT
    assert [p.name for p in config.parent.iterdir()] == ["marketflow.toml"]  # no temp files left
