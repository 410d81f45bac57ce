"""The SPEC §6 routes for operators and their tools: `/metrics` (Prometheus), `/auth/api-keys` (admin),
`/debug/tasks` (admin)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import trio
from msgspec import Meta
from quart import Response, current_app

from marketflow.api.app import PrometheusText
from marketflow.api.keys import DEFAULT_DAYS, MAX_DAYS, KeyRequestError, KeyStore, Scope
from marketflow.api.metrics import CONTENT_TYPE, render
from marketflow.api.queries import QueryError
from marketflow.api.routing import Iso, api, blueprint

log = logging.getLogger("marketflow.http")


class KeyRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=64)]
    scopes: Annotated[list[Literal["read", "write", "admin"]], Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["read"]
    )
    days: Annotated[float, Meta(gt=0, le=MAX_DAYS)] = DEFAULT_DAYS


class KeyOut(msgspec.Struct):
    prefix: str
    name: str
    scopes: list[str]
    created: Iso
    expires: Iso | None
    revoked: Iso | None
    state: str


class CreatedKeyOut(msgspec.Struct):
    key: Annotated[str, Meta(description="the secret: shown here once, never again")]
    prefix: str
    name: str
    scopes: list[str]
    created: Iso
    expires: Iso | None
    revoked: Iso | None
    state: str


class KeysOut(msgspec.Struct):
    keys: list[KeyOut]


class TaskOut(msgspec.Struct):
    name: str
    children: list[TaskOut]


class TasksOut(msgspec.Struct):
    tasks: TaskOut


# -- routes -------------------------------------------------------------------------------------------------


@blueprint.get("/metrics")
@api(PrometheusText, scope=Scope.READ, errors=(401, 403))
async def metrics() -> Response:
    """Prometheus text exposition."""
    body = render(current_app.config["MARKETFLOW_REGISTRY"])
    return Response(body, status=200, content_type=CONTENT_TYPE)


def _key_store() -> KeyStore:
    store: KeyStore = current_app.config["MARKETFLOW_AUTH"].store
    return store


T = TypeVar("T")


async def _in_store(func: Callable[..., T], *args: Any) -> T:
    """A key store call, in a worker thread; an unusable key file is a 503 whose cause goes to the log."""
    try:
        return await trio.to_thread.run_sync(func, *args)
    except OSError as exc:
        log.error("API key file unusable: %s", exc)
        detail = "the API key file cannot be used right now; the daemon's log says why"
        raise QueryError("unavailable", detail, None, 503) from None


@blueprint.post("/auth/api-keys")
@api(CreatedKeyOut, scope=Scope.ADMIN, body=KeyRequest, status=201, errors=(400, 401, 403, 413, 415, 503))
async def create_key(data: KeyRequest) -> tuple[dict[str, Any], int]:
    """Create an API key; the response holds the key itself, the only time it is shown."""
    store = _key_store()
    try:
        secret, key = await _in_store(store.create, data.name, data.scopes, data.days)
    except KeyRequestError as exc:
        raise QueryError("bad_parameter", str(exc), exc.param) from None
    return {"key": secret, **key.public()}, 201


@blueprint.get("/auth/api-keys")
@api(KeysOut, scope=Scope.ADMIN, errors=(401, 403, 503))
async def list_keys() -> dict[str, Any]:
    """Every key, without secrets (prefix, name, scopes, created, expires, revoked, state)."""
    keys = await _in_store(_key_store().keys)
    return {"keys": [k.public() for k in keys]}


@blueprint.delete("/auth/api-keys/<prefix>")
@api(KeyOut, scope=Scope.ADMIN, errors=(400, 401, 403, 404, 503))
async def revoke_key(prefix: str) -> dict[str, Any]:
    """Revoke a key by its prefix."""
    try:
        key = await _in_store(_key_store().revoke, prefix)
    except KeyRequestError as exc:
        status = 404 if "no API key" in str(exc) else 400
        raise QueryError(
            "not_found" if status == 404 else "bad_parameter", str(exc), "prefix", status
        ) from None
    return key.public()


def _task_tree(task: trio.lowlevel.Task) -> dict[str, Any]:
    return {
        "name": task.name,
        "children": [_task_tree(child) for nursery in task.child_nurseries for child in nursery.child_tasks],
    }


@blueprint.get("/debug/tasks")
@api(TasksOut, scope=Scope.ADMIN, errors=(401, 403))
async def debug_tasks() -> dict[str, Any]:
    """The trio task tree of the daemon process (admin scope)."""
    root = trio.lowlevel.current_root_task()
    if root is None:  # pragma: no cover - there is always a root task under trio.run
        raise QueryError("unavailable", "no trio root task", None, 503)
    return {"tasks": _task_tree(root)}
