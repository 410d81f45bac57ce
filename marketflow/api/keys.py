"""API keys: random secrets shown once, kept as SHA-256 hashes in `<daemon.state_dir>/api_keys.json`.

The file is JSON (`{"version": 1, "keys": [...]}`), mode 0600, replaced atomically (write a temporary file
in the same directory, fsync, rename, fsync the directory) under an advisory lock, so `marketflow keys ...`
and the running daemon can both change it; the daemon re-reads it when its modification time or size
changes, so a key created or revoked on the command line counts at once. A file of the wrong shape (or an
unknown scope) is a :class:`KeyFileError` naming the entry and field: no key is accepted until it is
mended. It works the same whatever the storage engine.

A key is `mf_` + 43 URL-safe characters (256 random bits). Its first :data:`PREFIX_LEN` characters are its
public name (`keys list`, `keys revoke PREFIX`, `DELETE /auth/api-keys/{prefix}`); the rest never leaves
the process that created it. Checks compare hashes with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from marketflow.model import now_us, us_to_iso

__all__ = [
    "DEFAULT_DAYS",
    "KEY_FILE",
    "ApiKey",
    "KeyFileError",
    "KeyRequestError",
    "KeyRejected",
    "KeyStore",
    "Scope",
    "add_keys_arguments",
    "key_store_path",
    "parse_scopes",
    "run_keys_command",
]

KEY_FILE = "api_keys.json"
KEY_PREFIX = "mf_"
PREFIX_LEN = 11  # "mf_" + 8 characters: 48 bits, enough to name a key, far too few to guess one
DEFAULT_DAYS = 7
MAX_DAYS = 3650
DAY_US = 86_400_000_000
_NAME = re.compile(r"[\w .@:/+-]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SCOPES = ("read", "write", "admin")


class Scope(enum.IntEnum):
    """What a key may do; each scope includes those below it."""

    READ = 1
    WRITE = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class KeyRequestError(ValueError):
    """A key request is invalid (bad name, scopes or days) or names no key; the message says which."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class KeyFileError(OSError):
    """The key file cannot be used: unreadable, not JSON, or not the shape this module writes.

    An :class:`OSError`, so every caller that treats an unreadable store as "keys cannot be checked now"
    (a 503, the CLI's exit 1) needs one `except`. The message names the file and what is wrong with it:
    log it, never show it to a client.
    """


class KeyRejected(Exception):
    """A presented key is unknown, revoked or expired (`reason`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.frozen
class ApiKey:
    """A stored key: everything but the secret."""

    prefix: str
    name: str
    scopes: tuple[str, ...]
    sha256: str = attrs.field(repr=False)
    created: int
    expires: int | None
    revoked: int | None = None

    @property
    def scope(self) -> Scope:
        """The highest scope the key holds."""
        return max(Scope[s.upper()] for s in self.scopes)

    def state(self, now: int) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"

    def public(self, now: int | None = None) -> dict[str, Any]:
        """JSON without secrets."""
        at = now_us() if now is None else now
        return {
            "prefix": self.prefix,
            "name": self.name,
            "scopes": list(self.scopes),
            "created": us_to_iso(self.created),
            "expires": None if self.expires is None else us_to_iso(self.expires),
            "revoked": None if self.revoked is None else us_to_iso(self.revoked),
            "state": self.state(at),
        }

    def record(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "name": self.name,
            "scopes": list(self.scopes),
            "sha256": self.sha256,
            "created": self.created,
            "expires": self.expires,
            "revoked": self.revoked,
        }


def parse_scopes(value: str | Sequence[str]) -> tuple[str, ...]:
    """`"read,write"` or `["read"]` → `("read", "write")`; at least one, each read|write|admin."""
    items = value.split(",") if isinstance(value, str) else list(value)
    scopes: list[str] = []
    for item in items:
        text = item.strip().lower() if isinstance(item, str) else ""
        if text not in ("read", "write", "admin"):
            raise KeyRequestError(
                f"scopes must be read, write and/or admin, got {str(item)[:32]!r}", "scopes"
            )
        if text not in scopes:
            scopes.append(text)
    if not scopes:
        raise KeyRequestError("scopes must name at least one of read, write, admin", "scopes")
    return tuple(scopes)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def key_store_path(state_dir: str) -> str:
    return os.path.join(state_dir, KEY_FILE)


class KeyStore:
    """The key file; every method is synchronous and quick (run writes in a thread from async code)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._keys: tuple[ApiKey, ...] = ()
        self._seen: tuple[int, int, int] | None = None

    # -- reading ----------------------------------------------------------------------------------------

    def keys(self) -> tuple[ApiKey, ...]:
        """Every key, revoked and expired ones too (re-read when the file changed)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._keys, self._seen = (), None
            return self._keys
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen != self._seen:
            self._keys = self._read()
            self._seen = seen
        return self._keys

    def _read(self) -> tuple[ApiKey, ...]:
        try:
            with open(self.path, encoding="utf-8") as f:
                doc = json.load(f)
        except FileNotFoundError:
            return ()
        except (OSError, ValueError, RecursionError) as exc:
            raise KeyFileError(f"API key file {self.path} is unreadable: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("keys", []), list):
            raise KeyFileError(
                f'API key file {self.path} is not a key file: expected {{"version": 1, "keys": [...]}}'
            )
        if doc.get("version", 1) != 1:
            raise KeyFileError(f"API key file {self.path} has version {doc['version']!r}; this reads 1")
        return tuple(self._record(index, item) for index, item in enumerate(doc.get("keys", [])))

    def _record(self, index: int, item: object) -> ApiKey:
        """Entry `index` of the file as an :class:`ApiKey`, or :class:`KeyFileError` naming the field."""

        def bad(field: str, expected: str) -> KeyFileError:
            where = f"keys[{index}]" + (f".{field}" if field else "")
            got = "missing" if isinstance(item, dict) and field not in item else repr(value)[:40]
            return KeyFileError(f"API key file {self.path}: {where} must be {expected}, got {got}")

        value: object = item
        if not isinstance(item, dict):
            raise bad("", "an object")
        fields: dict[str, Any] = {}
        for field in ("prefix", "name", "sha256"):
            value = item.get(field)
            if not isinstance(value, str) or not value:
                raise bad(field, "a non-empty string")
            fields[field] = value
        if not _SHA256.fullmatch(fields["sha256"]):
            value = fields["sha256"]
            raise bad("sha256", "64 lower-case hex digits")
        value = item.get("scopes")
        if not isinstance(value, list) or not value or any(s not in _SCOPES for s in value):
            raise bad("scopes", "a non-empty list of read, write, admin")
        fields["scopes"] = tuple(value)
        for field, optional in (("created", False), ("expires", True), ("revoked", True)):
            value = item.get(field)
            if optional and value is None:
                fields[field] = None
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(field, "epoch microseconds (an integer)" + (" or null" if optional else ""))
            fields[field] = value
        return ApiKey(**fields)

    def check(self, secret: str, now: int | None = None) -> ApiKey:
        """The key `secret` is, if it is active; else :class:`KeyRejected` (`unknown|revoked|expired`)."""
        digest = _hash(secret)
        found: ApiKey | None = None
        for key in self.keys():
            # Compare against every stored hash, so the time taken says nothing about which one matched.
            if hmac.compare_digest(digest, key.sha256):
                found = key
        if found is None:
            raise KeyRejected("unknown")
        state = found.state(now_us() if now is None else now)
        if state != "active":
            raise KeyRejected(state)
        return found

    # -- changing ---------------------------------------------------------------------------------------

    def create(
        self,
        name: str,
        scopes: str | Sequence[str],
        days: float | None = DEFAULT_DAYS,
        now: int | None = None,
    ) -> tuple[str, ApiKey]:
        """A new key: returns the secret (the only time it exists outside the caller) and its record."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise KeyRequestError(
                "name must be 1-64 letters, digits, spaces or . _ @ : / + -, got " + repr(str(name)[:64]),
                "name",
            )
        scope_list = parse_scopes(scopes)
        if days is None:
            days = DEFAULT_DAYS
        if isinstance(days, bool) or not isinstance(days, int | float) or not 0 < days <= MAX_DAYS:
            raise KeyRequestError(f"days must be more than 0 and at most {MAX_DAYS}, got {days!r}", "days")
        created = now_us() if now is None else now
        with self._locked():
            keys = list(self._read())
            taken = {k.prefix for k in keys}
            while True:
                secret = KEY_PREFIX + secrets.token_urlsafe(32)
                if secret[:PREFIX_LEN] not in taken:
                    break
            key = ApiKey(
                prefix=secret[:PREFIX_LEN],
                name=name,
                scopes=scope_list,
                sha256=_hash(secret),
                created=created,
                expires=created + int(days * DAY_US),
            )
            keys.append(key)
            self._write(keys)
        return secret, key

    def revoke(self, prefix: str, now: int | None = None) -> ApiKey:
        """Revoke the one key whose prefix `prefix` starts with (or that starts with `prefix`)."""
        text = prefix.strip()
        if len(text) < 4:
            raise KeyRequestError(
                "a key prefix has at least 4 characters (see `marketflow keys list`)", "prefix"
            )
        with self._locked():
            keys = list(self._read())
            matches = [
                i for i, k in enumerate(keys) if text.startswith(k.prefix) or k.prefix.startswith(text)
            ]
            if not matches:
                raise KeyRequestError(f"no API key has the prefix {text[:PREFIX_LEN]!r}", "prefix")
            if len(matches) > 1:
                raise KeyRequestError(
                    f"prefix {text!r} matches {len(matches)} keys; give more of it", "prefix"
                )
            index = matches[0]
            key = keys[index]
            if key.revoked is None:
                key = attrs.evolve(key, revoked=now_us() if now is None else now)
                keys[index] = key
                self._write(keys)
        return key

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, keys: Sequence[ApiKey]) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        payload = json.dumps({"version": 1, "keys": [k.record() for k in keys]}, indent=1)
        fd, tmp = tempfile.mkstemp(prefix=".api_keys.", dir=directory)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        # The rename is durable only once the directory is: without this a revocation could be undone
        # by a power loss.
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._seen = None


# -- command line -------------------------------------------------------------------------------------------


def add_keys_arguments(parser: argparse.ArgumentParser) -> None:
    """`marketflow keys create|list|revoke` (hashes live in `<daemon.state_dir>/api_keys.json`)."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="TOML config (default: $MARKETFLOW_CONFIG, else ./marketflow.toml, else built-in defaults)",
    )
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, help="what the key is for (1-64 characters)")
    create.add_argument("--scopes", default="read", help="read,write,admin (default: read)")
    create.add_argument(
        "--days", type=float, default=DEFAULT_DAYS, help=f"days until it expires (default {DEFAULT_DAYS})"
    )
    sub.add_parser("list", help="list keys (never their secrets)")
    revoke = sub.add_parser("revoke", help="revoke a key by its prefix")
    revoke.add_argument("prefix", metavar="PREFIX")
    for child in (create, sub.choices["list"], revoke):
        child.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def run_keys_command(args: argparse.Namespace) -> int:
    """Run `marketflow keys ...`; 0 done, 2 bad usage or configuration, 1 anything else."""
    from marketflow.config import ConfigError, default_config, load_config, resolve_config_path

    try:
        path = resolve_config_path(getattr(args, "config", None), os.environ)
        config = load_config(path) if path is not None else default_config()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    store = KeyStore(key_store_path(config.daemon.state_dir))
    try:
        if args.keys_command == "create":
            secret, key = store.create(args.name, args.scopes, args.days)
            print(secret)
            print(
                f"created {key.prefix} ({','.join(key.scopes)}), expires {us_to_iso(key.expires or 0)}; "
                "this is the only time the key is shown",
                file=sys.stderr,
            )
            return 0
        if args.keys_command == "list":
            now = now_us()
            rows = [("PREFIX", "NAME", "SCOPES", "CREATED", "EXPIRES", "STATE")]
            rows.extend(
                (
                    k.prefix,
                    k.name,
                    ",".join(k.scopes),
                    us_to_iso(k.created),
                    "never" if k.expires is None else us_to_iso(k.expires),
                    k.state(now),
                )
                for k in store.keys()  # noqa: SIM118 - a method of ours, not dict.keys
            )
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            for row in rows:
                print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
            return 0
        if args.keys_command == "revoke":
            key = store.revoke(args.prefix)
            print(f"revoked {key.prefix} ({key.name})")
            return 0
    except KeyRequestError as exc:
        print(f"marketflow keys: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"marketflow keys: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(args.keys_command)
