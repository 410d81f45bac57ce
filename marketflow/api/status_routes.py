"""The SPEC §6 routes that say how the daemon is doing: `/`, `/ping`, `/health`, `/collectors/status`,
`/collectors/storage/stats`."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from quart import Response

from marketflow import __version__
from marketflow.api import queries
from marketflow.api.app import context
from marketflow.api.keys import Scope
from marketflow.api.routing import api, blueprint


class RootOut(msgspec.Struct):
    name: str
    version: str
    links: dict[str, str]


class PongOut(msgspec.Struct):
    pong: bool


class ServiceOut(msgspec.Struct):
    state: str
    ok: bool
    problem: str | None = None


class HealthOut(msgspec.Struct):
    status: Literal["healthy", "degraded", "unhealthy"]
    services: dict[str, ServiceOut]


class QueueOut(msgspec.Struct):
    bus: str
    queued_batches: int
    capacity: int
    overflow: str
    dropped_batches: int
    dropped_items: int


class FeedOut(msgspec.Struct):
    exchange: str | None
    market: str | None
    state: str
    msgs_per_s: float | None
    last_message_age_s: float | None
    messages: int
    data_frames: int
    bytes: int
    connects: int
    disconnects: int
    pongs: int
    subscribed: list[str]
    rejected: dict[str, str]
    last_error: str | None


class ActorOut(msgspec.Struct):
    name: str
    state: str
    restarts: int
    failures: int
    circuit: str
    last_error: str | None
    uptime_s: float | None
    queue: list[QueueOut]
    feed: FeedOut | None = None
    statistics: Any = None


class StatusOut(msgspec.Struct):
    status: str
    actors: list[ActorOut]


class StorageOut(msgspec.Struct):
    engine: str
    url: str
    state: str
    restarts: int
    rows_written: int | None = None
    batches: int | None = None
    lag_ms: float | None = None
    buffered: int | None = None
    spooled: int | None = None
    errors: int | None = None


# -- routes -------------------------------------------------------------------------------------------------


@blueprint.get("/")
@api(RootOut, scope=None)
async def root() -> dict[str, Any] | Response:
    """Name, version and links; a browser (Accept prefers text/html) is sent to the dashboard."""
    from quart import redirect, request

    if request.accept_mimetypes.best_match(("application/json", "text/html")) == "text/html":
        # Relative, so it still lands right behind a reverse proxy that mounts us under a prefix.
        return redirect("dashboard", 303)  # type: ignore[return-value]
    links = {
        "openapi": "/openapi.json",
        "health": "/health",
        "status": "/collectors/status",
        "trades": "/collectors/trades",
        "metrics": "/metrics",
        "markets": "/markets",
    }
    if context().daemon.config.http.api_docs:
        links = {"docs": "/docs", **links}
    return {"name": "marketflow", "version": __version__, "links": links}


@blueprint.get("/ping")
@api(PongOut, scope=None)
async def ping() -> dict[str, Any]:
    """Liveness: answers while the HTTP server runs."""
    return {"pong": True}


@blueprint.get("/health")
@api(HealthOut, scope=None, status=(200, 503))
async def health() -> tuple[dict[str, Any], int]:
    """Health: 200 healthy or degraded, 503 unhealthy (storage not running). Open to everyone."""
    daemon = context().daemon
    report = daemon.health()
    services: dict[str, dict[str, Any]] = {}
    for child in daemon.supervisor.statistics().children:
        problem = report.problems.get(child.name)
        services[child.name] = {"state": child.state, "ok": problem is None, "problem": problem}
    for name, problem in report.problems.items():
        services.setdefault(name, {"state": problem, "ok": False, "problem": problem})
    return {"status": report.status, "services": services}, 503 if report.status == "unhealthy" else 200


@blueprint.get("/collectors/status")
@api(StatusOut, scope=Scope.READ, errors=(401, 403))
async def collectors_status() -> dict[str, Any]:
    """Every actor: state, restarts, circuit, and per feed msgs/s, last message age, queue depth."""
    return queries.status(context())


@blueprint.get("/collectors/status/<name>")
@api(ActorOut, scope=Scope.READ, errors=(401, 403, 404))
async def collectors_status_one(name: str) -> dict[str, Any]:
    """One actor by name (a feed connection such as bybit-spot, storage, books, normalizer, ...)."""
    return queries.status(context(), name)


@blueprint.get("/collectors/storage/stats")
@api(StorageOut, scope=Scope.READ, errors=(401, 403))
async def storage_stats() -> dict[str, Any]:
    """The storage writer: rows written, batches, lag, buffered, spooled, errors."""
    return queries.storage_stats(context())
