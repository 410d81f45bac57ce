"""Auth: the key matrix on a non-loopback listener, open reads on loopback, keys never logged or echoed.

The non-loopback view is real, not simulated: the server listens on 0.0.0.0 (not a loopback address), so
even a client on 127.0.0.1 needs a key for reads. The peer half of the rule (loopback listener, remote
peer) and proxy headers are covered on the policy directly and with `X-Forwarded-For`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
from quart import Blueprint
from quart_trio import QuartTrio

from marketflow.api.auth import AuthError, AuthPolicy, is_loopback, presented_key, require_scope
from marketflow.api.keys import KeyStore, Scope
from marketflow.model import now_us
from tests.api.conftest import running_api

TRADES = "/collectors/trades?exchange=bybit&symbol=BTC-USDT&limit=5"


def add_write_route(app: QuartTrio) -> None:
    """A write-scope route for the matrix (the product's write routes are /collectors/symbols)."""
    bp = Blueprint("test_write", __name__)

    @bp.post("/test/write")
    @require_scope(Scope.WRITE)
    async def write() -> dict[str, bool]:
        return {"written": True}

    app.register_blueprint(bp)


def make_keys(store: KeyStore) -> dict[str, str]:
    keys = {name: store.create(name, [name])[0] for name in ("read", "write", "admin")}
    keys["expired"] = store.create("expired", ["admin"], days=1, now=now_us() - 2 * 86_400_000_000)[0]
    revoked, record = store.create("revoked", ["admin"])
    store.revoke(record.prefix)
    keys["revoked"] = revoked
    keys["wrong"] = "mf_" + "x" * 43
    return keys


ROUTES = {
    "read": [("GET", TRADES), ("GET", "/metrics"), ("GET", "/collectors/status"), ("GET", "/gaps")],
    "write": [("POST", "/test/write")],
    "admin": [("GET", "/auth/api-keys"), ("GET", "/debug/tasks")],
}
LEVEL = {"read": 1, "write": 2, "admin": 3}


async def test_key_matrix_on_a_non_loopback_listener(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_api(tmp_path, listen="0.0.0.0:0", setup=add_write_route) as api:
            keys = make_keys(api.keys)
            await api.wait_trades(1)
            async with api.client() as client:
                for route_class, routes in ROUTES.items():
                    for method, path in routes:
                        # no key, wrong, expired, revoked: 401
                        assert (await client.request(method, path)).status_code == 401, path
                        for bad in ("wrong", "expired", "revoked"):
                            response = await client.request(method, path, headers={"X-API-Key": keys[bad]})
                            assert response.status_code == 401, (path, bad)
                            assert set(response.json()) == {"error", "detail"}
                        for scope in ("read", "write", "admin"):
                            for header in (
                                {"X-API-Key": keys[scope]},
                                {"Authorization": f"Bearer {keys[scope]}"},
                            ):
                                response = await client.request(method, path, headers=header)
                                allowed = LEVEL[scope] >= LEVEL[route_class]
                                assert response.status_code == (200 if allowed else 403), (path, scope)
                                if not allowed:
                                    assert response.json()["error"] == "forbidden"
                # Open to everyone, also here: liveness, health, the API description.
                for path in ("/", "/ping", "/health", "/openapi.json"):
                    assert (await client.get(path)).status_code in (200, 503), path


async def test_loopback_reads_are_open_but_writes_and_bad_keys_are_not(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_api(tmp_path, setup=add_write_route) as api:
            await api.wait_trades(1)
            async with api.client() as client:
                assert (await client.get(TRADES)).status_code == 200
                assert (await client.post("/test/write")).status_code == 401
                assert (await client.get("/auth/api-keys")).status_code == 401
                # A key, when given, is checked even where none is needed.
                assert (await client.get(TRADES, headers={"X-API-Key": "mf_nope"})).status_code == 401
                # Through a reverse proxy on the same host every client would look local: not open.
                proxied = await client.get(TRADES, headers={"X-Forwarded-For": "203.0.113.9"})
                assert proxied.status_code == 401


async def test_public_reads_opens_reads_only(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_api(tmp_path, listen="0.0.0.0:0", public_reads=True, setup=add_write_route) as api:
            await api.wait_trades(1)
            async with api.client() as client:
                assert (await client.get(TRADES)).status_code == 200
                assert (await client.post("/test/write")).status_code == 401
                assert (await client.get("/debug/tasks")).status_code == 401


def test_policy_judges_listener_and_peer(tmp_path: Path) -> None:
    store = KeyStore(str(tmp_path / "k.json"))
    loopback = AuthPolicy(store, "127.0.0.1")
    assert loopback.reads_open("127.0.0.1", {})
    assert loopback.reads_open("::1", {})
    assert not loopback.reads_open("10.1.2.3", {})  # a remote peer on a loopback listener (port forward)
    assert not loopback.reads_open(None, {})
    assert not AuthPolicy(store, "0.0.0.0").reads_open("127.0.0.1", {})
    assert not AuthPolicy(store, "::").reads_open("::1", {})
    assert AuthPolicy(store, "0.0.0.0", public_reads=True).reads_open("198.51.100.7", {})
    assert AuthPolicy(store, "localhost").reads_open("::ffff:127.0.0.1", {})
    assert [is_loopback(h) for h in ("127.8.9.1", "[::1]", "localhost", "::ffff:10.0.0.1", "", "x")] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
    with pytest.raises(AuthError) as caught:
        loopback.authorize(Scope.READ, {}, "10.1.2.3")
    assert caught.value.status == 401
    assert presented_key({"Authorization": "bearer  abc "}) == "abc"
    assert presented_key({"Authorization": "Basic abc"}) is None


async def test_keys_over_http_are_shown_once_and_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(30):
        async with running_api(tmp_path, listen="0.0.0.0:0") as api:
            admin, _ = api.keys.create("root", ["admin"])
            bodies: list[str] = []
            async with api.client(admin) as client:
                created = await client.post(
                    "/auth/api-keys", json={"name": "grafana", "scopes": ["read"], "days": 2}
                )
                assert created.status_code == 201
                secret = created.json()["key"]
                assert secret.startswith("mf_") and len(secret) >= 3 + 43
                prefix = created.json()["prefix"]
                assert secret.startswith(prefix) and created.json()["scopes"] == ["read"]
                async with api.client(secret, bearer=True) as reader:
                    ok = await reader.get(TRADES)
                    assert ok.status_code == 200
                    bodies.append(ok.text)
                    bodies.append((await reader.get("/auth/api-keys")).text)  # 403
                    bodies.append((await reader.get("/metrics")).text)
                listed = await client.get("/auth/api-keys")
                bodies.append(listed.text)
                entry = next(k for k in listed.json()["keys"] if k["prefix"] == prefix)
                assert entry["state"] == "active" and "sha256" not in entry and "key" not in entry
                bodies.append((await client.get("/debug/tasks")).text)
                bodies.append((await client.get("/collectors/status")).text)
                revoked = await client.delete(f"/auth/api-keys/{prefix}")
                assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
                bodies.append(revoked.text)
                assert (await client.delete("/auth/api-keys/mf_zzzzzzzz")).status_code == 404
                async with api.client(secret) as reader:
                    gone = await reader.get(TRADES)
                    assert gone.status_code == 401 and "revoked" in gone.json()["detail"]
                    bodies.append(gone.text)
                # A failing request is logged too; still without the key.
                bodies.append((await client.get("/collectors/trades?exchange=nope&symbol=x")).text)
            stored = await trio.Path(api.keys.path).read_text()
    assert (await trio.Path(api.keys.path).stat()).st_mode & 0o777 == 0o600
    for text in [caplog.text, stored, *bodies]:
        assert secret not in text and admin not in text
        assert secret[len(prefix) :] not in text


async def test_unexpected_errors_are_logged_500s_of_the_same_shape(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(app: QuartTrio) -> None:
        @app.get("/test/boom")
        async def fail() -> dict[str, str]:
            raise RuntimeError("kaboom")

    with trio.fail_after(30):
        async with running_api(tmp_path, setup=boom) as api, api.client("mf_secret_header") as client:
            response = await client.get("/test/boom", headers={"X-API-Key": "mf_secret_header"})
    assert response.status_code == 500
    assert response.json()["error"] == "internal" and set(response.json()) == {"error", "detail"}
    assert "kaboom" in caplog.text and "HTTP request failed" in caplog.text
    assert "mf_secret_header" not in caplog.text
