"""cryptofeed, the competitor `marketflow bench` measures against: its own virtual environment and its driver.

cryptofeed 3.x needs Python ≥ 3.13 (2.4.1 is the last for older interpreters) and is AGPL-3.0, so it is
never imported here nor installed into marketflow's environment: `ensure_venv()` builds a separate venv in
the user's cache, and `start_driver()` runs `cryptofeed_driver.py` (a standalone script) with that venv's
python. The driver speaks JSON lines on stdout; `parse_line()` / `DriverMonitor` turn them into records.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import attrs

from marketflow.bench.pgcluster import PgDsn

CRYPTOFEED_MODERN = "3.0.1"
"""The cryptofeed release measured, on Python ≥ 3.13."""
CRYPTOFEED_LEGACY = "2.4.1"
"""The last cryptofeed release that installs on Python < 3.13."""
MODERN_MIN_PYTHON = (3, 13)
EXTRA_PACKAGES = ("asyncpg",)
"""What cryptofeed's PostgreSQL backend imports; cryptofeed declares it only as an extra."""
PYTHON_ENV = "MARKETFLOW_BENCH_PYTHON"
PATH_CANDIDATES = ("python3.13", "python3.14")
PYENV_GLOB = "~/.pyenv/versions/3.1[3-9]*/bin/python"
DRIVER_PATH = Path(__file__).with_name("cryptofeed_driver.py")
_COMPLETE_MARKER = ".marketflow-complete"
_PROBE = "import sys; print('%d.%d' % sys.version_info[:2])"
_VERSION_PROBE = (
    "import cryptofeed, asyncpg\n"
    "from importlib.metadata import version\n"
    "print(getattr(cryptofeed, '__version__', None) or version('cryptofeed'))"
)

Mode = Literal["noop", "postgres"]
Overflow = Literal["block", "drop_oldest", "drop_new"]


class CryptofeedEnvError(RuntimeError):
    """cryptofeed's environment could not be found, built or started; the message names the step and cause."""


@attrs.frozen
class CryptofeedEnv:
    python: Path
    """The venv's interpreter: run the driver with it."""
    version: str
    """cryptofeed's version as the venv reports it."""
    created: bool
    """True when this call built the venv, False when an existing one was reused."""


# -- the interpreter -----------------------------------------------------------------------------------


def python_version(executable: str | Path) -> tuple[int, int] | None:
    """`(major, minor)` of an interpreter, or None when it does not run (e.g. a pyenv shim for a version
    that is installed but not selected)."""
    try:
        result = subprocess.run(
            [str(executable), "-c", _PROBE], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    try:
        major, minor = result.stdout.strip().split(".")
        return int(major), int(minor)
    except ValueError:
        return None


def cryptofeed_version_for(version: tuple[int, int]) -> str:
    return CRYPTOFEED_MODERN if version >= MODERN_MIN_PYTHON else CRYPTOFEED_LEGACY


def _candidates(env: Mapping[str, str]) -> Iterator[Path]:
    for name in PATH_CANDIDATES:
        found = shutil.which(name, path=env.get("PATH"))
        if found:
            yield Path(found)
    home = env.get("HOME")
    pattern = PYENV_GLOB.replace("~", home, 1) if home else os.path.expanduser(PYENV_GLOB)
    # newest first: 3.14 before 3.13, 3.13.2 before 3.13.0
    for path in sorted(glob.glob(pattern), key=_version_key, reverse=True):
        yield Path(path)


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.parent.name
    return tuple(int(p) if p.isdigit() else -1 for p in version.split("."))


def find_python(env: Mapping[str, str] | None = None) -> tuple[Path, str]:
    """The interpreter for cryptofeed's venv and the cryptofeed version to install on it.

    `$MARKETFLOW_BENCH_PYTHON` when set (an error if it does not run); else the first of `python3.13`,
    `python3.14` on PATH, then `~/.pyenv/versions/3.13+`, that runs and is ≥ 3.13 → cryptofeed 3.0.1;
    else the current interpreter → cryptofeed 2.4.1.
    """
    env = os.environ if env is None else env
    chosen = env.get(PYTHON_ENV)
    if chosen:
        version = python_version(chosen)
        if version is None:
            raise CryptofeedEnvError(f"${PYTHON_ENV}={chosen!r} is not a working Python interpreter")
        return Path(chosen), cryptofeed_version_for(version)
    for candidate in _candidates(env):
        version = python_version(candidate)
        if version is not None and version >= MODERN_MIN_PYTHON:
            return candidate, CRYPTOFEED_MODERN
    return Path(sys.executable), cryptofeed_version_for(sys.version_info[:2])


# -- the venv ----------------------------------------------------------------------------------------------


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_CACHE_HOME/marketflow/bench`, or `~/.cache/marketflow/bench`."""
    env = os.environ if env is None else env
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "marketflow" / "bench"


def venv_dir_name(cryptofeed_version: str, python: tuple[int, int]) -> str:
    return f"cryptofeed-{cryptofeed_version}-py{python[0]}.{python[1]}"


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _installed_version(python: Path) -> str | None:
    """cryptofeed's version in the venv of `python` when cryptofeed and asyncpg import there, else None."""
    if not python.exists():
        return None
    result = subprocess.run(
        [str(python), "-c", _VERSION_PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _check_not_ours(venv: Path) -> None:
    ours = Path(sys.prefix).resolve()
    target = venv.resolve()
    if target == ours or ours in target.parents or target in ours.parents:
        raise CryptofeedEnvError(
            f"refusing to build cryptofeed's venv at {venv}: it overlaps marketflow's environment {ours}"
        )


def ensure_venv(
    cache_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    python: tuple[Path, str] | None = None,
) -> CryptofeedEnv:
    """cryptofeed's own virtual environment, built on first use and reused afterwards.

    `python` is `find_python()`'s answer (found when None). The venv lives in
    `cache_dir / cryptofeed-<ver>-py<x.y>` and gets `pip install cryptofeed==<ver> asyncpg`; a lock file
    keeps two concurrent benchmarks from building it at once. Raises CryptofeedEnvError naming the step
    that failed and the tail of its output.
    """
    say = progress or (lambda _message: None)
    interpreter, wanted = python or find_python()
    version = python_version(interpreter)
    if version is None:
        raise CryptofeedEnvError(f"{interpreter} is not a working Python interpreter")
    root = cache_dir if cache_dir is not None else default_cache_dir()
    venv = root / venv_dir_name(wanted, version)
    _check_not_ours(venv)
    venv_python = venv / "bin" / "python"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / (venv.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (venv / _COMPLETE_MARKER).exists():
            installed = _installed_version(venv_python)
            if installed == wanted:
                say(f"reusing cryptofeed {installed} in {venv}")
                return CryptofeedEnv(venv_python, installed, created=False)
            say(f"cryptofeed venv {venv} is broken (found {installed!r}); rebuilding it")
        shutil.rmtree(venv, ignore_errors=True)
        say(f"creating a venv for cryptofeed {wanted} with {interpreter} (Python {version[0]}.{version[1]})")
        _run_step("python -m venv", [str(interpreter), "-m", "venv", str(venv)])
        say(f"pip install cryptofeed=={wanted} {' '.join(EXTRA_PACKAGES)}")
        _run_step(
            f"pip install cryptofeed=={wanted}",
            [
                str(venv_python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-q",
                f"cryptofeed=={wanted}",
                *EXTRA_PACKAGES,
            ],
        )
        installed = _installed_version(venv_python)
        if installed is None:
            raise CryptofeedEnvError(f"cryptofeed {wanted} was installed in {venv} but does not import")
        (venv / _COMPLETE_MARKER).write_text(installed + "\n")
        say(f"cryptofeed {installed} ready in {venv}")
        return CryptofeedEnv(venv_python, installed, created=True)


def _run_step(step: str, cmd: Sequence[str]) -> None:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CryptofeedEnvError(f"{step} failed: {exc}") from exc
    if result.returncode != 0:
        output = _tail(result.stderr) or _tail(result.stdout)
        raise CryptofeedEnvError(f"{step} failed (exit {result.returncode}):\n{output}")


# -- the driver ----------------------------------------------------------------------------------------


def driver_command(
    env: CryptofeedEnv,
    *,
    exchange: str,
    market: str,
    ws_url: str,
    rest_url: str | None,
    cafile: Path | None,
    symbols: Iterable[str],
    mode: Mode,
    pg: PgDsn | None = None,
    overflow: Overflow | None = None,
    report_interval: float = 0.25,
    pg_table: str = "trades",
) -> list[str]:
    """The driver's command line (see `cryptofeed_driver.py`)."""
    symbols = list(symbols)
    if not symbols:
        raise ValueError("the cryptofeed driver needs at least one symbol")
    if mode == "postgres" and pg is None:
        raise ValueError("mode 'postgres' needs the database (pg)")
    if overflow is not None and mode != "postgres":
        raise ValueError("overflow only applies to mode 'postgres'")
    cmd = [
        str(env.python),
        str(DRIVER_PATH),
        "--exchange",
        exchange,
        "--market",
        market,
        "--ws-url",
        ws_url,
        "--symbols",
        ",".join(symbols),
        "--mode",
        mode,
        "--report-interval",
        repr(report_interval),
    ]
    if rest_url is not None:
        cmd += ["--rest-url", rest_url]
    if cafile is not None:
        cmd += ["--cafile", str(cafile)]
    if pg is not None and mode == "postgres":
        cmd += ["--pg-host", pg.host, "--pg-port", str(pg.port), "--pg-user", pg.user]
        cmd += ["--pg-database", pg.database, "--pg-table", pg_table]
        if pg.password is not None:
            cmd += ["--pg-password", pg.password]
    if overflow is not None:
        cmd += ["--overflow", overflow]
    return cmd


def driver_environment(workdir: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The driver's environment: cryptofeed's symbol cache under `workdir`, no stray config file."""
    env = dict(os.environ if base is None else base)
    env["XDG_CACHE_HOME"] = str(workdir / "cache")
    env.pop("CRYPTOFEED_CONFIG", None)
    env.pop("PYTHONPATH", None)  # never let marketflow's tree leak into cryptofeed's interpreter
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_driver(
    env: CryptofeedEnv,
    *,
    exchange: str,
    market: str,
    ws_url: str,
    rest_url: str | None,
    cafile: Path | None,
    symbols: Iterable[str],
    mode: Mode,
    pg: PgDsn | None,
    overflow: Overflow | None,
    workdir: Path,
    report_interval: float = 0.25,
    pg_table: str = "trades",
) -> subprocess.Popen[str]:
    """Start the driver with its cwd in `workdir` (cryptofeed writes `feedhandler.log` there) and its
    stderr in `workdir/driver.stderr`. Read its stdout with `DriverMonitor`; stop it with `stop_driver`."""
    cmd = driver_command(
        env,
        exchange=exchange,
        market=market,
        ws_url=ws_url,
        rest_url=rest_url,
        cafile=cafile,
        symbols=symbols,
        mode=mode,
        pg=pg,
        overflow=overflow,
        report_interval=report_interval,
        pg_table=pg_table,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "driver.stderr", "w") as stderr:
        try:
            return subprocess.Popen(
                cmd,
                cwd=workdir,
                env=driver_environment(workdir),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                bufsize=1,
            )
        except OSError as exc:
            raise CryptofeedEnvError(f"cannot start the cryptofeed driver {cmd[:2]}: {exc}") from exc


def stop_driver(
    proc: subprocess.Popen[str], *, grace_s: float = 20.0, sig: signal.Signals = signal.SIGTERM
) -> int:
    """Ask the driver to stop (it flushes cryptofeed's backend and prints its final line), wait up to
    `grace_s`, then kill it. Returns the exit status (negative = killed by that signal)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# -- what the driver says ----------------------------------------------------------------------------------


class DriverProtocolError(ValueError):
    """A line on the driver's stdout that is not one of its records."""


@attrs.frozen
class DriverReady:
    """Every connection has subscribed."""

    t: float
    cpu_s: float | None
    rss_bytes: int | None


@attrs.frozen
class DriverReport:
    """Cumulative counters at wall time `t`; `final` on the last one, after a graceful stop."""

    t: float
    trades: int
    """Trades received by the no-op callback (before any backend)."""
    last_exchange_ts_ms: int | None
    cpu_s: float
    """The driver process's CPU time so far (subtract `DriverReady.cpu_s` for the run alone)."""
    rss_bytes: int
    frames: int | None = None
    """WebSocket messages received (data frames plus acks)."""
    subscribes: int = 0
    """Subscriptions sent: more than the connection count means cryptofeed reconnected."""
    written: int | None = None
    """postgres: rows the backend reports committed."""
    queued: int | None = None
    dropped_overflow: int | None = None
    dropped_failed: int | None = None
    rows: int | None = None
    """postgres, final only: `count(*)` of the table after the stop."""
    final: bool = False
    cryptofeed: str | None = None


@attrs.frozen
class DriverMessage:
    """A warning or error: cryptofeed's log records at WARNING and above, or an exception in the driver."""

    level: Literal["warning", "error"]
    t: float | None
    text: str
    detail: Mapping[str, Any] = attrs.field(factory=dict)


DriverEvent = DriverReady | DriverReport | DriverMessage


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def parse_line(line: str) -> DriverEvent | None:
    """One stdout line of the driver as a record; None for a blank line."""
    line = line.strip()
    if not line:
        return None
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise DriverProtocolError(f"cryptofeed driver printed a non-JSON line: {line[:200]!r}") from exc
    if not isinstance(data, dict):
        raise DriverProtocolError(f"cryptofeed driver printed a non-object: {line[:200]!r}")
    event = data.get("event")
    try:
        if event == "ready":
            cpu = data.get("cpu")
            return DriverReady(
                float(data["t"]), None if cpu is None else float(cpu), _opt_int(data.get("rss"))
            )
        if event in ("warning", "error"):
            text = data.get("exception") or data.get("message") or ""
            if data.get("message") and data.get("exception"):
                text = f"{data['message']}: {data['exception']}"
            t = data.get("t")
            return DriverMessage(event, None if t is None else float(t), str(text), data)
        if event in (None, "final"):
            return DriverReport(
                t=float(data["t"]),
                trades=int(data["trades"]),
                last_exchange_ts_ms=_opt_int(data.get("last_ts")),
                cpu_s=float(data["cpu"]),
                rss_bytes=int(data["rss"]),
                frames=_opt_int(data.get("frames")),
                subscribes=int(data.get("subscribes") or 0),
                written=_opt_int(data.get("written")),
                queued=_opt_int(data.get("queued")),
                dropped_overflow=_opt_int(data.get("dropped_overflow")),
                dropped_failed=_opt_int(data.get("dropped_failed")),
                rows=_opt_int(data.get("rows")),
                final=event == "final",
                cryptofeed=data.get("cryptofeed"),
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise DriverProtocolError(f"cryptofeed driver record {line[:200]!r}: {exc}") from exc
    raise DriverProtocolError(f"cryptofeed driver printed an unknown event {event!r}")


def iter_events(stream: IO[str]) -> Iterator[DriverEvent]:
    """The driver's records as they arrive, until its stdout closes (blocking)."""
    for line in stream:
        event = parse_line(line)
        if event is not None:
            yield event


class DriverMonitor:
    """Reads a driver's stdout on a daemon thread and keeps what matters, for any caller's concurrency
    model (a Trio harness waits with `trio.to_thread.run_sync(monitor.wait_ready, 30)`)."""

    def __init__(
        self, proc: subprocess.Popen[str], on_event: Callable[[DriverEvent], None] | None = None
    ) -> None:
        if proc.stdout is None:
            raise ValueError("the driver's stdout must be a pipe")
        self.proc = proc
        self.ready: DriverReady | None = None
        self.latest: DriverReport | None = None
        self.final: DriverReport | None = None
        self.messages: list[DriverMessage] = []
        self.protocol_errors: list[str] = []
        self._on_event = on_event
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closed = False
        self._thread = threading.Thread(
            target=self._read, args=(proc.stdout,), name="cryptofeed-driver-stdout", daemon=True
        )
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                try:
                    event = parse_line(line)
                except DriverProtocolError as exc:
                    with self._changed:
                        self.protocol_errors.append(str(exc))
                    continue
                if event is None:
                    continue
                with self._changed:
                    if isinstance(event, DriverReady):
                        self.ready = event
                    elif isinstance(event, DriverReport):
                        self.latest = event
                        if event.final:
                            self.final = event
                    else:
                        self.messages.append(event)
                    self._changed.notify_all()
                if self._on_event is not None:
                    self._on_event(event)
        finally:
            with self._changed:
                self._closed = True
                self._changed.notify_all()

    def _wait(self, done: Callable[[], bool], timeout: float | None) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: done() or self._closed, timeout) and done()

    def wait_ready(self, timeout: float | None = None) -> DriverReady | None:
        """The ready record, or None if the driver exited (or `timeout` passed) first."""
        self._wait(lambda: self.ready is not None, timeout)
        return self.ready

    def wait_trades(self, count: int, timeout: float | None = None) -> DriverReport | None:
        """The first report with at least `count` trades, or the latest one on exit or timeout."""
        self._wait(lambda: self.latest is not None and self.latest.trades >= count, timeout)
        return self.latest

    def wait_final(self, timeout: float | None = None) -> DriverReport | None:
        self._wait(lambda: self.final is not None, timeout)
        return self.final

    def errors(self) -> list[DriverMessage]:
        with self._lock:
            return [m for m in self.messages if m.level == "error"]
