"""cryptofeed's side of `marketflow bench`: interpreter choice, driver command line and records (no network).

The real venv install is exercised by `marketflow bench`, not here.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from marketflow.bench import cryptofeed_env as cfe
from marketflow.bench.cryptofeed_env import (
    CRYPTOFEED_LEGACY,
    CRYPTOFEED_MODERN,
    DRIVER_PATH,
    CryptofeedEnv,
    CryptofeedEnvError,
    DriverMessage,
    DriverMonitor,
    DriverProtocolError,
    DriverReady,
    DriverReport,
    driver_command,
    driver_environment,
    ensure_venv,
    find_python,
    parse_line,
    stop_driver,
)
from marketflow.bench.pgcluster import PgDsn

PACKAGE = Path(cfe.__file__).resolve().parents[1]


def fake_python(path: Path, version: str | None) -> Path:
    """An executable that answers the version probe like a Python `version` would (None: like a broken
    pyenv shim, exit 127)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = f"echo {version}" if version else "echo 'pyenv: command not found' >&2; exit 127"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


# -- find_python -----------------------------------------------------------------------------------------


def test_explicit_interpreter_wins_and_its_version_picks_cryptofeed(tmp_path: Path) -> None:
    modern = fake_python(tmp_path / "a" / "py", "3.13")
    old = fake_python(tmp_path / "b" / "py", "3.12")
    on_path = fake_python(tmp_path / "bin" / "python3.14", "3.14")
    path = str(tmp_path / "bin")
    assert find_python({"MARKETFLOW_BENCH_PYTHON": str(modern), "PATH": path}) == (modern, CRYPTOFEED_MODERN)
    assert find_python({"MARKETFLOW_BENCH_PYTHON": str(old), "PATH": path}) == (old, CRYPTOFEED_LEGACY)
    assert find_python({"PATH": path, "HOME": str(tmp_path)}) == (on_path, CRYPTOFEED_MODERN)


def test_explicit_interpreter_that_does_not_run_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CryptofeedEnvError, match="MARKETFLOW_BENCH_PYTHON"):
        find_python({"MARKETFLOW_BENCH_PYTHON": str(tmp_path / "missing")})


def test_path_before_pyenv_and_broken_shims_are_skipped(tmp_path: Path) -> None:
    home = tmp_path / "home"
    fake_python(tmp_path / "bin" / "python3.13", None)  # a pyenv shim for a version not selected
    good = fake_python(tmp_path / "bin" / "python3.14", "3.14")
    fake_python(home / ".pyenv" / "versions" / "3.13.0" / "bin" / "python", "3.13")
    assert find_python({"PATH": str(tmp_path / "bin"), "HOME": str(home)}) == (good, CRYPTOFEED_MODERN)


def test_pyenv_newest_first_and_too_old_candidates_skipped(tmp_path: Path) -> None:
    versions = tmp_path / ".pyenv" / "versions"
    fake_python(versions / "3.13.0" / "bin" / "python", "3.13")
    newest = fake_python(versions / "3.13.10" / "bin" / "python", "3.13")
    fake_python(versions / "3.12.1" / "bin" / "python", "3.12")
    fake_python(tmp_path / "bin" / "python3.13", "3.12")  # misnamed: too old, skipped
    env = {"PATH": str(tmp_path / "bin"), "HOME": str(tmp_path)}
    assert find_python(env) == (newest, CRYPTOFEED_MODERN)


def test_falls_back_to_this_interpreter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MARKETFLOW_BENCH_PYTHON", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path))
    expected = CRYPTOFEED_MODERN if sys.version_info >= (3, 13) else CRYPTOFEED_LEGACY
    assert find_python() == (Path(sys.executable), expected)


def test_python_version_of_a_real_interpreter() -> None:
    assert cfe.python_version(sys.executable) == sys.version_info[:2]
    assert cfe.python_version("/nonexistent/python") is None


# -- the venv's place --------------------------------------------------------------------------------------


def test_cache_dir_honours_xdg(tmp_path: Path) -> None:
    assert cfe.default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "marketflow" / "bench"
    assert cfe.default_cache_dir({}) == Path.home() / ".cache" / "marketflow" / "bench"
    assert cfe.venv_dir_name("3.0.1", (3, 13)) == "cryptofeed-3.0.1-py3.13"


def test_never_builds_inside_marketflows_environment(tmp_path: Path) -> None:
    fake = fake_python(tmp_path / "py", "3.13")
    with pytest.raises(CryptofeedEnvError, match="overlaps marketflow's environment"):
        ensure_venv(Path(sys.prefix) / "cryptofeed-cache", python=(fake, CRYPTOFEED_MODERN))
    assert not (Path(sys.prefix) / "cryptofeed-cache").exists()


def test_failed_venv_creation_names_the_step(tmp_path: Path) -> None:
    # answers the version probe, then fails `-m venv` with a message on stderr
    script = tmp_path / "py"
    script.write_text(
        '#!/bin/sh\nif [ "$1" = "-m" ]; then echo "venv: no ensurepip here" >&2; exit 1; fi\necho 3.13\n'
    )
    script.chmod(0o755)
    with pytest.raises(CryptofeedEnvError, match=r"(?s)python -m venv failed \(exit 1\).*no ensurepip"):
        ensure_venv(tmp_path / "cache", python=(script, CRYPTOFEED_MODERN))


# -- the driver's command line ----------------------------------------------------------------------------

ENV = CryptofeedEnv(Path("/cache/cf/bin/python"), "3.0.1", created=False)


def test_noop_command() -> None:
    cmd = driver_command(
        ENV,
        exchange="bybit",
        market="linear",
        ws_url="wss://127.0.0.1:9/v5/public/linear",
        rest_url=None,
        cafile=Path("/tmp/ca.pem"),
        symbols=["BTCUSDT", "ETHUSDT"],
        mode="noop",
    )
    assert cmd == [
        "/cache/cf/bin/python",
        str(DRIVER_PATH),
        "--exchange",
        "bybit",
        "--market",
        "linear",
        "--ws-url",
        "wss://127.0.0.1:9/v5/public/linear",
        "--symbols",
        "BTCUSDT,ETHUSDT",
        "--mode",
        "noop",
        "--report-interval",
        "0.25",
        "--cafile",
        "/tmp/ca.pem",
    ]


def test_postgres_command_carries_the_database_and_overflow() -> None:
    cmd = driver_command(
        ENV,
        exchange="binance",
        market="spot",
        ws_url="wss://127.0.0.1:9",
        rest_url="https://127.0.0.1:9",
        cafile=None,
        symbols=["BTCUSDT"],
        mode="postgres",
        pg=PgDsn("127.0.0.1", 5499, "postgres", "bench", "pw"),
        overflow="block",
        report_interval=0.5,
    )
    args = cmd[2:]
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs == {
        "--exchange": "binance",
        "--market": "spot",
        "--ws-url": "wss://127.0.0.1:9",
        "--symbols": "BTCUSDT",
        "--mode": "postgres",
        "--report-interval": "0.5",
        "--rest-url": "https://127.0.0.1:9",
        "--pg-host": "127.0.0.1",
        "--pg-port": "5499",
        "--pg-user": "postgres",
        "--pg-database": "bench",
        "--pg-table": "trades",
        "--pg-password": "pw",
        "--overflow": "block",
    }
    driver = load_driver()
    parsed = driver.parse_args(args)
    assert (parsed.pg_port, parsed.overflow, parsed.symbols, parsed.report_interval) == (
        5499,
        "block",
        ["BTCUSDT"],
        0.5,
    )


@pytest.mark.parametrize(
    ("mode", "pg", "overflow", "symbols", "message"),
    [
        ("postgres", None, None, ["BTCUSDT"], "needs the database"),
        ("noop", None, "block", ["BTCUSDT"], "only applies"),
        ("noop", None, None, [], "at least one symbol"),
    ],
)
def test_command_refuses_inconsistent_arguments(
    mode: cfe.Mode, pg: PgDsn | None, overflow: cfe.Overflow | None, symbols: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        driver_command(
            ENV,
            exchange="bybit",
            market="linear",
            ws_url="wss://x/v5/public/linear",
            rest_url=None,
            cafile=None,
            symbols=symbols,
            mode=mode,
            pg=pg,
            overflow=overflow,
        )


def test_driver_environment_points_caches_into_the_workdir(tmp_path: Path) -> None:
    env = driver_environment(tmp_path, {"PATH": "/bin", "PYTHONPATH": "/work/main", "CRYPTOFEED_CONFIG": "x"})
    assert env == {"PATH": "/bin", "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}


# -- the driver's records ----------------------------------------------------------------------------------


def test_parse_ready_report_final_and_messages() -> None:
    assert parse_line("") is None
    assert parse_line('{"event":"ready","t":10.5,"cpu":0.4,"rss":1000,"subscribes":1}') == DriverReady(
        10.5, 0.4, 1000
    )
    report = parse_line(
        '{"t":11.0,"trades":42,"last_ts":1700000000123,"cpu":0.9,"rss":2048,"frames":21,"subscribes":1}'
    )
    assert report == DriverReport(11.0, 42, 1700000000123, 0.9, 2048, frames=21, subscribes=1)
    final = parse_line(
        '{"t":12.0,"trades":42,"last_ts":null,"cpu":1.0,"rss":2048,"written":40,"queued":0,'
        '"dropped_overflow":2,"dropped_failed":0,"event":"final","rows":40,"cryptofeed":"3.0.1"}'
    )
    assert isinstance(final, DriverReport)
    assert (final.final, final.rows, final.written, final.dropped_overflow, final.last_exchange_ts_ms) == (
        True,
        40,
        40,
        2,
        None,
    )
    assert final.cryptofeed == "3.0.1"
    warning = parse_line('{"event":"warning","t":1.0,"logger":"cryptofeed.backends","message":"queue full"}')
    assert isinstance(warning, DriverMessage)
    assert (warning.level, warning.text) == ("warning", "queue full")
    error = parse_line('{"event":"error","t":1.0,"where":"setup","exception":"ValueError: bad"}')
    assert isinstance(error, DriverMessage)
    assert (error.level, error.text, error.detail["where"]) == ("error", "ValueError: bad", "setup")


@pytest.mark.parametrize(
    "line", ["not json", "[1, 2]", '{"event":"bogus"}', '{"t":1.0,"trades":"x","cpu":0,"rss":0}', '{"t":1}']
)
def test_parse_refuses_garbage(line: str) -> None:
    with pytest.raises(DriverProtocolError):
        parse_line(line)


def _python_printing(lines: list[str], *, then: str = "") -> subprocess.Popen[str]:
    code = "import sys, time, signal\n" + "".join(f"print({line!r}, flush=True)\n" for line in lines) + then
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_monitor_collects_records_from_a_process() -> None:
    proc = _python_printing(
        [
            '{"event":"ready","t":1.0,"cpu":0.1,"rss":10}',
            '{"t":1.25,"trades":5,"last_ts":7,"cpu":0.2,"rss":10}',
            "garbage",
            '{"event":"warning","t":1.3,"message":"queue full"}',
            '{"t":1.5,"trades":9,"last_ts":8,"cpu":0.3,"rss":10,"event":"final"}',
        ]
    )
    monitor = DriverMonitor(proc)
    final = monitor.wait_final(30)
    assert proc.wait(30) == 0
    assert monitor.ready == DriverReady(1.0, 0.1, 10)
    assert final is not None and final.final and final.trades == 9
    assert monitor.latest == final
    assert [m.text for m in monitor.messages] == ["queue full"]
    assert monitor.errors() == []
    assert len(monitor.protocol_errors) == 1


def test_monitor_returns_when_the_driver_dies_before_ready() -> None:
    proc = _python_printing(['{"event":"error","t":1.0,"where":"setup","exception":"ImportError: x"}'])
    monitor = DriverMonitor(proc)
    assert monitor.wait_ready(30) is None
    assert [m.text for m in monitor.errors()] == ["ImportError: x"]


def test_stop_driver_signals_then_kills() -> None:
    polite = _python_printing(["up"], then="time.sleep(60)\n")
    assert polite.stdout is not None and polite.stdout.readline() == "up\n"
    assert stop_driver(polite, grace_s=30) == -15
    stubborn = _python_printing(
        [], then="signal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(60)\n"
    )
    assert stubborn.stdout is not None and stubborn.stdout.readline() == "up\n"
    assert stop_driver(stubborn, grace_s=0.5) == -9


# -- the driver script itself ------------------------------------------------------------------------------


def load_driver() -> ModuleType:
    """The standalone driver, loaded by path for its pure helpers (its top level imports only stdlib)."""
    spec = importlib.util.spec_from_file_location("cryptofeed_driver_under_test", DRIVER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_driver_is_valid_python_importing_only_stdlib_cryptofeed_and_its_dependencies() -> None:
    tree = ast.parse(DRIVER_PATH.read_text(), str(DRIVER_PATH))
    compile(tree, str(DRIVER_PATH), "exec")
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    allowed = set(sys.stdlib_module_names) | {"__future__", "cryptofeed", "asyncpg", "uvloop"}
    assert roots <= allowed, roots - allowed


def test_marketflow_never_imports_the_driver_or_cryptofeed() -> None:
    offenders = []
    # The scripts that run in cryptofeed's own venv (never imported by marketflow).
    scripts = {DRIVER_PATH.resolve(), (DRIVER_PATH.parent / "cryptofeed_mix.py").resolve()}
    for path in PACKAGE.rglob("*.py"):
        if path.resolve() in scripts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
            offenders += [
                f"{path}: {name}"
                for name in names
                if name.split(".")[0] == "cryptofeed"
                or name.endswith(("cryptofeed_driver", "cryptofeed_mix"))
            ]
    assert offenders == []


def test_driver_splits_symbols_and_builds_instrument_documents() -> None:
    driver = load_driver()
    assert driver.split_symbol("BTCUSDT") == ("BTC", "USDT")
    assert driver.split_symbol("ethusdc") == ("ETH", "USDC")
    assert driver.split_symbol("SOL-BTC") == ("SOL", "BTC")
    with pytest.raises(ValueError, match="BASE-QUOTE"):
        driver.split_symbol("USDT")
    (linear,) = driver.instruments_document("bybit", "linear", ["BTCUSDT"])
    assert linear["result"]["list"][0]["contractType"] == "LinearPerpetual"
    (spot,) = driver.instruments_document("bybit", "spot", ["BTCUSDT"])
    assert "contractType" not in spot["result"]["list"][0]
    usdm = driver.instruments_document("binance", "usdm", ["ETHUSDT"])
    assert usdm["symbols"][0]["baseAsset"] == "ETH" and usdm["symbols"][0]["contractType"] == "PERPETUAL"


def test_driver_refuses_a_market_of_the_other_venue() -> None:
    driver = load_driver()
    with pytest.raises(SystemExit):
        driver.parse_args(["--exchange", "binance", "--market", "linear", "--ws-url", "x", "--symbols", "A"])


def test_driver_reports_setup_errors_as_json_when_cryptofeed_is_missing(tmp_path: Path) -> None:
    # marketflow's venv has no cryptofeed: the driver must say so on stdout, as a record, and exit non-zero
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = textwrap.dedent(
        """
        import sys
        sys.modules["cryptofeed"] = None  # importing it raises ImportError, wherever it is installed
        sys.argv = ["driver"] + sys.argv[1:]
        exec(compile(open(sys.argv.pop(1)).read(), "driver", "exec"), {"__name__": "__main__"})
        """
    )
    args = ["--exchange", "bybit", "--market", "linear", "--ws-url", "wss://x/v5/public/linear"]
    result = subprocess.run(
        [sys.executable, "-c", code, str(DRIVER_PATH), *args, "--symbols", "BTCUSDT"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stdout.splitlines()
    event = parse_line(line)
    assert isinstance(event, DriverMessage) and event.level == "error"
    assert "cryptofeed" in event.text and "ModuleNotFoundError" in event.text
