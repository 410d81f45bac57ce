"""Symbol edits keep the TOML file's comments and formatting, and never leave it invalid."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from marketflow.config import Config, ConfigError, load_config
from marketflow.config.edit import (
    BadSymbol,
    ConfigChanged,
    ConfigReadOnly,
    EditError,
    change_symbols,
    edit_symbols,
)
from marketflow.config.overlay import clean_symbol
from marketflow.model import SymbolError
from tests.readonly import read_only

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
        (
            {"exchange": "nowhere", "market": "spot", "symbol": "BTC-USDT", "add": False},
            "no feed for nowhere",
        ),
        ({"exchange": "nowhere", "market": "spot", "symbol": "BTC-USDT", "add": True}, "would make"),
        ({"exchange": "bybit", "market": "spot", "symbol": "", "add": True}, "empty symbol"),
    ],
)
def test_refused_edits_leave_the_file_untouched(config: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(EditError, match=message):
        edit_symbols(config, env={}, **kwargs)
    assert config.read_text() == TEXT
    assert [p.name for p in config.parent.iterdir()] == ["marketflow.toml"]  # no temp files left


# --- change_symbols: what the symbols API runs ------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "market", "message"),
    [
        ("DOGEUSDT\n\t ", "spot", r"holds the character '\\n'"),
        (" BTCUSDT", "spot", "holds the character ' '"),
        ("BTC\x00USDT", "spot", r"holds the character '\\x00'"),
        ("X" * 5000, "spot", "a symbol of 5000 characters; symbols have at most 32"),
        ("ВТСUSDT", "spot", "non-ASCII character U\\+0412 \\(CYRILLIC CAPITAL LETTER VE\\)"),
        ("ſOLUSDT", "spot", "non-ASCII character U\\+017F"),  # upper() would make it SOLUSDT
        ("BTCUSDＴ", "linear", "non-ASCII character U\\+FF34"),
        ("BTC-USDT-PERP", "spot", "not a spot symbol"),
        ("BTC--USDT", "spot", "misplaced '-'"),
        ("BTC/USD/EUR", "spot", "misplaced '-' or '/'"),
        ("BTC-USD/EUR", "spot", "misplaced '-' or '/'"),
        ("XYZ", "spot", "cannot tell base and quote apart"),
        ("", "spot", "empty symbol"),
    ],
)
def test_clean_symbol_refuses_junk(raw: str, market: str, message: str) -> None:
    with pytest.raises(SymbolError, match=message):
        clean_symbol(raw, market)


def test_clean_symbol_normalizes() -> None:
    assert clean_symbol("dogeusdt", "spot") == "DOGE-USDT"
    assert clean_symbol("DOGE-USDT", "linear") == "DOGE-USDT-PERP"
    assert clean_symbol("1000PEPEUSDT", "usdm") == "1000PEPE-USDT-PERP"


def test_clean_symbol_takes_a_venues_slash_natives() -> None:
    assert clean_symbol("xbt/usd", "spot", "kraken") == "BTC-USD"
    assert clean_symbol("XDGUSD", "spot", "kraken") == "DOGE-USD"
    with pytest.raises(SymbolError):
        clean_symbol("BTC/USDT", "spot", "bybit")  # the venue decides: bybit has no such spelling


def running(path: Path) -> Config:
    return load_config(path, env={})


def test_the_normalized_symbol_is_written(config: Path) -> None:
    edit = change_symbols(
        running(config), exchange="bybit", market="spot", symbol="dogeusdt", add=True, env={}
    )
    assert 'symbols = ["BTCUSDT", "ETHUSDT", "DOGE-USDT"]  # next to the array' in config.read_text()
    assert edit.written == str(config) and edit.config.feeds[0].symbols[-1] == "DOGE-USDT"
    with pytest.raises(BadSymbol, match="holds the character"):
        change_symbols(running(config), exchange="bybit", market="spot", symbol="SOLUSDT\n", add=True, env={})


def test_a_symlinked_file_is_edited_where_it_points(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    target = tmp_path / "etc" / "real.toml"
    target.write_text(TEXT)
    link = tmp_path / "marketflow.toml"
    link.symlink_to(target)
    edit = change_symbols(running(link), exchange="bybit", market="spot", symbol="SOL-USDT", add=True, env={})
    assert link.is_symlink() and link.resolve() == target
    assert '"SOL-USDT"' in target.read_text() and edit.written == str(target)
    assert edit.config.source == str(link)
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == ["real.toml"]


def test_an_unreloaded_edit_is_not_built_on(config: Path) -> None:
    loaded = running(config)
    edited = TEXT.replace('log_level = "info"', 'log_level = "debug"')
    config.write_text(edited)  # a person saved this, and did not reload
    with pytest.raises(ConfigChanged, match="changed since the daemon loaded it; reload first"):
        change_symbols(loaded, exchange="bybit", market="spot", symbol="SOL-USDT", add=True, env={})
    assert config.read_text() == edited
    # After the reload (a fresh load) the same change goes through, on top of that edit.
    change_symbols(running(config), exchange="bybit", market="spot", symbol="SOL-USDT", add=True, env={})
    assert 'log_level = "debug"' in config.read_text() and '"SOL-USDT"' in config.read_text()


def test_a_half_edited_file_is_refused_with_the_parse_error(config: Path) -> None:
    loaded = running(config)
    config.write_text(TEXT + '[[feeds]]\nexchange = "bybit\n')  # saved mid-edit
    with pytest.raises(
        ConfigChanged, match=r"(?s)is invalid now; fix it and reload.*:17: <toml>: invalid TOML"
    ) as err:
        change_symbols(loaded, exchange="bybit", market="spot", symbol="SOL-USDT", add=True, env={})
    assert err.value.status == 409
    # Even with no digest to compare (an edit started from text), the parse error is named, not raised raw.
    with pytest.raises(ConfigChanged, match="is not valid TOML"):
        edit_symbols(config, exchange="bybit", market="spot", symbol="SOL-USDT", add=True, env={})


def test_a_read_only_file_gets_the_change_in_the_overlay(tmp_path: Path) -> None:
    etc, state = tmp_path / "etc", tmp_path / "state"
    etc.mkdir()
    state.mkdir()
    config = etc / "marketflow.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{state}"\n'
        + TEXT.split('[daemon]\nlog_level = "info"   # keep this comment\n')[1]
    )
    loaded = running(config)
    with read_only(etc):
        added = change_symbols(loaded, exchange="bybit", market="spot", symbol="SOLUSDT", add=True, env={})
        assert added.written == str(state / "symbols.toml")
        assert added.config.feeds[0].symbols == ("BTC-USDT", "ETH-USDT", "SOL-USDT")
        removed = change_symbols(
            added.config, exchange="binance", market="usdm", symbol="BTCUSDT", add=False, env={}
        )
        assert [f.name for f in removed.config.feeds] == ["bybit-spot"]
        # Changes go on to the overlay while it exists, and one undoes another there.
        again = change_symbols(
            removed.config, exchange="bybit", market="spot", symbol="SOL-USDT", add=False, env={}
        )
    overlay = (state / "symbols.toml").read_text()
    assert 'remove = ["BTC-USDT-PERP"]' in overlay and "SOL-USDT" not in overlay
    assert config.read_text().startswith("[daemon]") and "SOL" not in config.read_text()
    # Every load (start, reload, check-config) applies it after the main file, and knows what it read.
    reloaded = running(config)
    assert reloaded.feeds == again.config.feeds and reloaded.digest == again.config.digest
    # A person's later edit of the main file still counts: the overlay holds differences, not a copy.
    config.write_text(config.read_text().replace('symbols = ["BTCUSDT", "ETHUSDT"]', 'symbols = ["XRPUSDT"]'))
    assert running(config).feeds[0].symbols == ("XRP-USDT",)


def test_neither_file_writable_is_a_clear_409(tmp_path: Path) -> None:
    etc, state = tmp_path / "etc", tmp_path / "state"
    etc.mkdir()
    state.mkdir()
    config = etc / "marketflow.toml"
    config.write_text(f'[daemon]\nstate_dir = "{state}"\n')
    loaded = running(config)
    with read_only(etc), read_only(state), pytest.raises(ConfigReadOnly) as err:
        change_symbols(loaded, exchange="bybit", market="spot", symbol="SOLUSDT", add=True, env={})
    message = str(err.value)
    assert err.value.status == 409 and f"{config} is read-only here" in message
    assert f"give the daemon write access to {state}" in message
    assert not (state / "symbols.toml").exists()


def test_a_bad_overlay_is_named_at_load(tmp_path: Path) -> None:
    config = tmp_path / "marketflow.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\n')
    (tmp_path / "symbols.toml").write_text(
        '[[feeds]]\nexchange = "bybit"\nmarket = "spot"\nadd = ["SOL USDT"]\nspam = 1\n'
    )
    with pytest.raises(ConfigError) as err:
        running(config)
    assert [issue.key for issue in err.value.issues] == ["feeds[0].spam", "feeds[0].add[0]"]
    assert all(issue.path == str(tmp_path / "symbols.toml") for issue in err.value.issues)


@contextlib.contextmanager
def acting_as(uid: int) -> Iterator[None]:
    """This process's file accesses checked as `uid`'s (effective ids) while the block runs."""
    os.setegid(uid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the edit as the container's user")
def test_the_container_shape_root_owned_etc_unprivileged_daemon() -> None:
    """As in the Containerfile: /etc/marketflow is root's, the daemon runs as uid 10001 and owns only its
    state volume. The edit, made as that user, lands in the overlay (a real EACCES on /etc)."""
    root = Path(tempfile.mkdtemp(prefix="mf-container-"))
    try:
        root.chmod(0o755)
        etc, state = root / "etc", root / "state"
        etc.mkdir()
        state.mkdir()
        os.chown(state, 10001, 10001)
        config = etc / "marketflow.toml"
        config.write_text(f'[daemon]\nstate_dir = "{state}"\n' + TEXT.split("# keep this comment\n")[1])
        loaded = running(config)
        with acting_as(10001):
            edit = change_symbols(loaded, exchange="bybit", market="spot", symbol="SOLUSDT", add=True, env={})
        assert edit.written == str(state / "symbols.toml")
        assert (state / "symbols.toml").stat().st_uid == 10001
        assert "SOL" not in config.read_text()
        assert load_config(config, env={}).feeds[0].symbols == ("BTC-USDT", "ETH-USDT", "SOL-USDT")
    finally:
        shutil.rmtree(root)


def test_the_overlay_records_what_the_main_file_no_longer_gives(tmp_path: Path) -> None:
    """The overlay removed ETH; a person then dropped ETH from the main file too. Adding ETH back over HTTP
    must add it (undoing the removal alone would leave it out)."""
    config = tmp_path / "marketflow.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path}"\n' + TEXT.split("# keep this comment\n")[1])
    (tmp_path / "symbols.toml").write_text(
        '[[feeds]]\nexchange = "bybit"\nmarket = "spot"\nremove = ["ETH-USDT"]\n'
    )
    config.write_text(config.read_text().replace('symbols = ["BTCUSDT", "ETHUSDT"]', 'symbols = ["BTCUSDT"]'))
    edit = change_symbols(
        running(config), exchange="bybit", market="spot", symbol="ETHUSDT", add=True, env={}
    )
    assert edit.config.feeds[0].symbols == ("BTC-USDT", "ETH-USDT")
    assert running(config).feeds[0].symbols == ("BTC-USDT", "ETH-USDT")
    assert 'add = ["ETH-USDT"]' in (tmp_path / "symbols.toml").read_text()
