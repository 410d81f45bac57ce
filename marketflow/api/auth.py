"""Who may call what (SPEC §6): API keys with scopes read < write < admin; reads may be open.

A key comes as `X-API-Key: <key>` or `Authorization: Bearer <key>`. A presented key is always checked,
also on a read that would be open without one: a wrong, revoked or expired key is a 401, a key whose scope
is too low a 403. Without a key, writes and admin routes are a 401; reads are served only when
`http.public_reads = true`, or when the server listens on a loopback address *and* the request comes from
a loopback peer *and* carries no proxy header (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`; present counts,
even empty): a reverse proxy on the same host would otherwise make every remote client look local.

On a loopback listener only requests whose `Host` is a loopback name (`localhost`, `127.x.x.x`, `[::1]`,
any port) or one of `http.allowed_hosts` are served: a web page on `evil.example` whose DNS name is made to
resolve to 127.0.0.1 (DNS rebinding) would otherwise read every open route with the browser as its proxy.
A request without `Host` (HTTP/1.0; no browser sends one) passes.

A key file that cannot be used (unreadable, wrong shape) makes every keyed request a 503 whose detail says
only that keys cannot be checked: the cause, with the file's path, goes to the log, not to a client that
may not even have a valid key.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import wraps
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import attrs

from marketflow.api.keys import ApiKey, KeyRejected, KeyStore, Scope

__all__ = [
    "AuthError",
    "AuthPolicy",
    "host_name",
    "is_loopback",
    "misdirected",
    "presented_key",
    "require_scope",
]

log = logging.getLogger("marketflow.http")

P = ParamSpec("P")
R = TypeVar("R")

PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


class AuthError(Exception):
    """A request is not allowed: 401 (no usable key) or 403 (scope too low)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def is_loopback(host: str | None) -> bool:
    """Whether `host` is a loopback address (`127.0.0.0/8`, `::1`, `localhost`)."""
    if not host:
        return False
    text = host.strip().removeprefix("[").removesuffix("]")
    if text.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def host_name(authority: str) -> str | None:
    """The lower-case host of a `Host` value (`host[:port]`, IPv6 in brackets), or None if malformed."""
    try:
        parts = urlsplit("//" + authority.strip())
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return None
    if parts.path or parts.query or parts.fragment or parts.username is not None:
        return None
    return (parts.hostname or "").removesuffix(".") or None


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key of a request, from `X-API-Key` or `Authorization: Bearer`, or None."""
    key = headers.get("X-API-Key")
    if key:
        return key.strip()
    authorization = headers.get("Authorization", "")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


@attrs.frozen
class AuthPolicy:
    """The rules for one server: its key store, listen host and `public_reads`."""

    store: KeyStore
    listen_host: str
    public_reads: bool = False
    allowed_hosts: tuple[str, ...] = ()
    """Host names served on a loopback listener besides loopback ones (lower case, no port)."""

    def host_allowed(self, host: str | None) -> bool:
        """Whether a request with this `Host` header may be served (the DNS-rebinding guard)."""
        if host is None or not is_loopback(self.listen_host):
            return True
        name = host_name(host)
        if name is None:
            return False
        return is_loopback(name) or name in self.allowed_hosts

    def reads_open(self, peer: str | None, headers: Mapping[str, str]) -> bool:
        """Reads need no key: `public_reads`, or loopback listener, loopback peer and no proxy header."""
        if self.public_reads:
            return True
        if not is_loopback(self.listen_host) or not is_loopback(peer):
            return False
        # Present is enough, even empty: a proxy that forwards an empty header is still a proxy.
        return not any(name in headers for name in PROXY_HEADERS)

    def authorize(self, required: Scope, headers: Mapping[str, str], peer: str | None) -> ApiKey | None:
        """The request's key (None for an open read), or :class:`AuthError`."""
        secret = presented_key(headers)
        if secret is None:
            if required is Scope.READ and self.reads_open(peer, headers):
                return None
            raise AuthError(
                401,
                "unauthorized",
                f"this route needs an API key with {required.label} scope "
                "(header X-API-Key: <key> or Authorization: Bearer <key>)",
            )
        try:
            key = self.store.check(secret)
        except KeyRejected as exc:
            what = {"unknown": "is not valid", "revoked": "was revoked", "expired": "has expired"}
            raise AuthError(
                401, "unauthorized", f"the API key {what.get(exc.reason, 'is not valid')}"
            ) from None
        except OSError as exc:
            log.error("API keys cannot be checked: %s", exc)
            raise AuthError(
                503, "unavailable", "API keys cannot be checked right now; the daemon's log says why"
            ) from None
        if key.scope < required:
            raise AuthError(
                403,
                "forbidden",
                f"API key {key.prefix} has scope {key.scope.label}; this route needs {required.label}",
            )
        return key


def misdirected(host: str) -> AuthError:
    """The answer to a request whose `Host` this server does not serve."""
    return AuthError(
        421,
        "misdirected_request",
        f"Host {host[:100]!r} is not served here: on a loopback address this server answers only to "
        "localhost, 127.x.x.x, [::1] and the names in http.allowed_hosts (a DNS-rebinding guard)",
    )


def require_scope(
    scope: Scope,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Route decorator: the request must be allowed `scope` by the app's :class:`AuthPolicy`.

    Put it under the route decorator and above the validation decorators, so a request without the
    right key is refused before its parameters are looked at. The key is in `quart.g.api_key`.
    """

    def decorator(func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            from quart import current_app, g, request

            policy: AuthPolicy = current_app.config["MARKETFLOW_AUTH"]
            g.api_key = policy.authorize(scope, request.headers, request.remote_addr)  # type: ignore[arg-type]
            return await func(*args, **kwargs)

        wrapper.__dict__["_marketflow_scope"] = scope
        return wrapper

    return decorator


def route_scope(func: Any) -> Scope | None:
    """The scope a view function requires (None: open to everyone)."""
    scope = getattr(func, "_marketflow_scope", None)
    return scope if isinstance(scope, Scope) else None
