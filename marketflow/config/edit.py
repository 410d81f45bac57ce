"""Edits to the TOML configuration file that keep its comments, order and formatting (tomlkit).

Used by the symbols API: adding or removing a symbol rewrites only the `symbols` array of the matching
`[[feeds]]` table (or appends a new table), validates the whole result with the same checks as
`check-config`, and replaces the file atomically — an edit that would make the file invalid is refused
and the file is left untouched. A symlinked file is edited where it points (the link stays).

`change_symbols` is what the API runs: it refuses to build on a file that changed since the daemon loaded
it (a person's unreloaded edit must not go live behind their back), and where the file cannot be written
(a read-only /etc under systemd or in the container) it records the change in the symbols overlay under
the state directory instead (`marketflow.config.overlay`).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import attrs
import tomlkit
import tomlkit.exceptions
from tomlkit.items import AoT, Array, Table

from marketflow.config.issues import ConfigError
from marketflow.config.load import config_digest, parse_config
from marketflow.config.overlay import (
    SymbolDelta,
    apply_deltas,
    check_market,
    clean_symbol,
    overlay_path,
    parse_overlay,
    read_overlay,
    render_overlay,
)
from marketflow.config.sections import Config
from marketflow.exchanges import VENUES
from marketflow.model import SymbolError

_READ_ONLY = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


class EditError(Exception):
    """The edit cannot be made; the message says why (the file is unchanged). `status` and `code` are
    what the HTTP API answers."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_symbol_change"


class BadSymbol(EditError):
    """The symbol, exchange or market given is not one (junk, or not of that market)."""

    code = "bad_symbol"


class NotCollected(EditError):
    status = 404


class ConfigChanged(EditError):
    """The file on disk is not what the daemon runs: edited without a reload, or half-edited."""

    status = 409
    code = "config_changed"


class ConfigReadOnly(EditError):
    status = 409
    code = "config_read_only"


class ConfigUnwritable(EditError):
    """Writing failed for another reason than permissions (a full disk, an I/O error)."""

    status = 503
    code = "config_write_failed"


@attrs.frozen
class SymbolEdit:
    """The new configuration, and the file the change was written to (the main file or the overlay)."""

    config: Config
    written: str


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


def _same_symbol(written: object, normalized: str, exchange: str, market: str) -> bool:
    venue = VENUES.get(exchange)
    try:
        return (
            isinstance(written, str)
            and venue is not None
            and venue.normalize_symbol(market, written) == normalized
        )
    except (SymbolError, ValueError):
        return False


def _read(file: Path) -> str:
    try:
        return file.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ConfigChanged(f"cannot read {file}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigChanged(f"{file} is not valid UTF-8") from exc


def edit_symbols(
    path: str | os.PathLike[str],
    *,
    exchange: str,
    market: str,
    symbol: str,
    add: bool,
    name: str | None = None,
    env: dict[str, str] | None = None,
    text: str | None = None,
) -> Config:
    """Add or remove one symbol of a feed in the file at `path`; returns the new, validated config.

    The symbol is written normalized (BTC-USDT, BTC-USDT-PERP). Adding to a feed that does not exist
    appends a `[[feeds]]` table for it; removing a feed's last symbol removes its table. Raises `EditError`
    (nothing written) when the edit is impossible or invalid, `OSError` when the file cannot be written.
    `text`: the file's content as already read (and checked) by the caller.
    """
    file = Path(os.path.realpath(path))  # through a symlink: replace the target, keep the link
    if text is None:
        text = _read(file)
    try:
        # An exchange no venue has is refused below, as not collected or by the whole-file check.
        normalized = clean_symbol(symbol, market, exchange if exchange in VENUES else None)
    except SymbolError as exc:
        raise BadSymbol(f"symbol: {exc}") from exc
    new_text = _edited(
        text, file, exchange=exchange, market=market, normalized=normalized, add=add, name=name
    )
    try:
        config = parse_config(new_text, source=os.fspath(path), env=env)
    except ConfigError as exc:
        raise EditError(f"the edit would make {file} invalid:\n{exc}") from exc
    _replace(file, new_text)
    return config


def _edited(
    text: str, file: Path, *, exchange: str, market: str, normalized: str, add: bool, name: str | None
) -> str:
    try:
        doc = tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigChanged(f"{file} is not valid TOML ({exc}); finish the edit, then reload") from exc
    feeds = _feeds(doc)
    table = next((t for t in feeds or [] if _matches(t, exchange, market, name)), None)
    if add:
        if table is None:
            new = tomlkit.table()
            new.add("exchange", exchange)
            new.add("market", market)
            new.add("symbols", [normalized])
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
            if any(_same_symbol(s, normalized, exchange, market) for s in symbols):
                raise EditError(f"{normalized} is already collected from {exchange} {market}")
            symbols.append(normalized)
    else:
        if table is None:
            raise NotCollected(f"no feed for {exchange} {market} in {file}")
        symbols = table.get("symbols")
        if not isinstance(symbols, Array):
            raise EditError(f"feed {exchange} {market} has no symbols array")
        index = next(
            (i for i, s in enumerate(symbols) if _same_symbol(s, normalized, exchange, market)), None
        )
        if index is None:
            raise NotCollected(f"{normalized} is not collected from {exchange} {market}")
        if len(symbols) == 1:
            assert feeds is not None
            feeds.remove(table)
        else:
            del symbols[index]
    return tomlkit.dumps(doc)


def change_symbols(
    running: Config,
    *,
    exchange: str,
    market: str,
    symbol: str,
    add: bool,
    env: dict[str, str] | None = None,
) -> SymbolEdit:
    """Add or remove a symbol for the daemon running `running` (loaded from a file): in that file, or in
    the symbols overlay where the file is read-only or an overlay already exists.

    Raises `BadSymbol` for junk, `ConfigChanged` when the files on disk are not what `running` was loaded
    from (checked by digest), `ConfigReadOnly` when neither the file nor the overlay can be written.
    """
    assert running.source is not None
    try:
        check_market(exchange, market)
        normalized = clean_symbol(symbol, market, exchange)
    except SymbolError as exc:
        raise BadSymbol(str(exc)) from exc
    source = running.source
    main = Path(os.path.realpath(source))
    text = _read(main)
    try:
        base = parse_config(text, source=source, env=env)
    except ConfigError as exc:
        raise ConfigChanged(
            f"{source} is not what the daemon runs and is invalid now; fix it and reload "
            f"(SIGHUP, systemctl reload marketflow), then retry:\n{exc}"
        ) from exc
    overlay_file = overlay_path(base)
    try:
        overlay = read_overlay(overlay_file)
    except ConfigError as exc:
        raise ConfigChanged(str(exc)) from exc
    if running.digest is not None and config_digest(text, overlay) != running.digest:
        changed = source if overlay is None else f"{source} or {overlay_file}"
        raise ConfigChanged(
            f"{changed} changed since the daemon loaded it; reload first (SIGHUP, systemctl reload "
            "marketflow) so that edit is checked and applied, then retry"
        )
    if overlay is None:
        try:
            new = edit_symbols(
                source, exchange=exchange, market=market, symbol=normalized, add=add, env=env, text=text
            )
            return SymbolEdit(new, str(main))  # its digest is that of the text written
        except OSError as exc:
            if exc.errno not in _READ_ONLY:
                raise ConfigUnwritable(f"cannot write {main}: {exc.strerror or exc}") from exc
            reason = f"{main} is read-only here ({exc.strerror})"
    else:
        reason = f"{overlay_file} holds earlier changes"
    return _change_overlay(base, text, overlay, exchange, market, normalized, add=add, reason=reason)


def _change_overlay(
    base: Config,
    text: str,
    overlay: str | None,
    exchange: str,
    market: str,
    normalized: str,
    *,
    add: bool,
    reason: str,
) -> SymbolEdit:
    file = overlay_path(base)
    try:
        deltas = list(parse_overlay(overlay or "", str(file)))
        current = apply_deltas(base, deltas, str(file))
    except ConfigError as exc:
        raise ConfigChanged(str(exc)) from exc
    collected = _collects(current, exchange, market, normalized)
    if add and collected:
        raise EditError(f"{normalized} is already collected from {exchange} {market}")
    if not add and not collected:
        raise NotCollected(f"{normalized} is not collected from {exchange} {market}")
    index = next((i for i, d in enumerate(deltas) if (d.exchange, d.market) == (exchange, market)), None)
    delta = SymbolDelta(exchange, market) if index is None else deltas[index]
    # First undo an opposite change the overlay holds; if the main file alone does not give the wanted
    # result (a person edited it since), record the change itself.
    if add:
        delta = attrs.evolve(delta, remove=tuple(s for s in delta.remove if s != normalized))
    else:
        delta = attrs.evolve(delta, add=tuple(s for s in delta.add if s != normalized))
    deltas = deltas + [delta] if index is None else [*deltas[:index], delta, *deltas[index + 1 :]]
    new = _applied(base, deltas, file)
    if _collects(new, exchange, market, normalized) != add:
        if add:
            delta = attrs.evolve(delta, add=(*delta.add, normalized))
        else:
            delta = attrs.evolve(delta, remove=(*delta.remove, normalized))
        deltas = [delta if (d.exchange, d.market) == (exchange, market) else d for d in deltas]
        new = _applied(base, deltas, file)
    new_overlay = render_overlay(deltas, base.source or "the configuration file")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        _replace(file, new_overlay)
    except OSError as exc:
        if exc.errno not in _READ_ONLY:
            raise ConfigUnwritable(f"cannot write {file}: {exc.strerror or exc}") from exc
        raise ConfigReadOnly(
            f"{reason}, and the symbols overlay {file} cannot be written either ({exc.strerror}); "
            f"give the daemon write access to {file.parent} (daemon.state_dir) or to {base.source}, "
            "or edit the file and reload"
        ) from exc
    return SymbolEdit(attrs.evolve(new, digest=config_digest(text, new_overlay)), str(file))


def _applied(base: Config, deltas: list[SymbolDelta], file: Path) -> Config:
    try:
        return apply_deltas(base, deltas, str(file))
    except ConfigError as exc:
        raise EditError(str(exc)) from exc


def _collects(config: Config, exchange: str, market: str, symbol: str) -> bool:
    """Whether the first feed of (exchange, market) in `config` collects `symbol` (the overlay's rule)."""
    feed = next((f for f in config.feeds if (f.exchange, f.market) == (exchange, market)), None)
    return feed is not None and symbol in feed.symbols


def _replace(file: Path, text: str) -> None:
    """Write `text` to a temporary file beside `file`, fsync it, rename it over `file`, fsync the folder."""
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
    folder = os.open(file.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)  # the rename itself survives a power loss
    finally:
        os.close(folder)
