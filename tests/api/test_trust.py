"""Trust boundaries of the HTTP API: the key file, proxies, Host names, nested bodies, the docs pages.

- A key file of the wrong shape (or with an unknown scope) is a clear error naming the entry and field: a
  503 with a generic detail for clients, the cause (with the file's path) in the log; a rename of the file
  is made durable by an fsync of its directory.
- A proxy header counts when present, even empty: reads through a same-host proxy need a key.
- JSON bodies nested deeper than `MAX_JSON_DEPTH` are a 400, never a RecursionError's 500.
- On a loopback listener a `Host` that is not a loopback name or configured is a 421 (DNS rebinding).
- The docs pages (scripts from a CDN) are served only with `http.api_docs = true`.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from marketflow.api.app import MAX_JSON_DEPTH, json_depth
from marketflow.api.auth import AuthPolicy
from marketflow.api.keys import KeyFileError, KeyStore, run_keys_command
from tests.api.conftest import running_api
from tests.api.test_mcp import JSON_HEADERS, LEGACY, initialize, modern, running_mcp

STATUS = "/collectors/status"
GOOD = {
    "prefix": "mf_abcdefgh",
    "name": "ci",
    "scopes": ["read"],
    "sha256": "0" * 64,
    "created": 1,
    "expires": None,
    "revoked": None,
}

# (file content, what the error must say)
BAD_FILES: list[tuple[Any, str]] = [
    ([], 'not a key file: expected {"version": 1, "keys": [...]}'),
    ({"keys": {"a": 1}}, "not a key file"),
    ({"version": 2, "keys": []}, "has version 2; this reads 1"),
    ({"keys": ["mf_x"]}, "keys[0] must be an object"),
    ({"keys": [GOOD, {**GOOD, "scopes": ["read", "superuser"]}]}, "keys[1].scopes must be a non-empty list"),
    ({"keys": [{**GOOD, "scopes": []}]}, "keys[0].scopes must be a non-empty list of read, write, admin"),
    (
        {"keys": [{k: v for k, v in GOOD.items() if k != "sha256"}]},
        "keys[0].sha256 must be a non-empty string",
    ),
    ({"keys": [{**GOOD, "sha256": "xyz"}]}, "keys[0].sha256 must be 64 lower-case hex digits, got 'xyz'"),
    ({"keys": [{**GOOD, "created": "yesterday"}]}, "keys[0].created must be epoch microseconds"),
    (
        {"keys": [{**GOOD, "expires": True}]},
        "keys[0].expires must be epoch microseconds (an integer) or null",
    ),
    ({"keys": [{**GOOD, "name": 7}]}, "keys[0].name must be a non-empty string, got 7"),
]


@pytest.mark.parametrize(("content", "message"), BAD_FILES)
def test_a_key_file_of_the_wrong_shape_names_what_is_wrong(
    tmp_path: Path, content: Any, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "api_keys.json"
    path.write_text(json.dumps(content))
    store = KeyStore(str(path))
    with pytest.raises(KeyFileError) as caught:
        store.check("mf_" + "x" * 43)
    assert message in str(caught.value) and str(path) in str(caught.value)
    with pytest.raises(KeyFileError, match="must be|not a key file|version"):
        store.create("x", "read")
    assert json.loads(path.read_text()) == content  # a change never overwrites a file it cannot read
    # The command line says the same and exits 1.
    (tmp_path / "m.toml").write_text(f'[daemon]\nstate_dir = "{tmp_path}"\n')
    args = type("Args", (), {"config": str(tmp_path / "m.toml"), "keys_command": "list"})()
    assert run_keys_command(args) == 1  # type: ignore[arg-type]
    assert message in capsys.readouterr().err


def test_a_good_file_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "api_keys.json"
    path.write_text(json.dumps({"version": 1, "keys": [GOOD, {**GOOD, "prefix": "mf_other000"}]}))
    keys = KeyStore(str(path)).keys()  # noqa: SIM118 - a method of ours, not dict.keys
    assert [k.prefix for k in keys] == ["mf_abcdefgh", "mf_other000"]


def test_a_change_fsyncs_the_directory_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = KeyStore(str(tmp_path / "state" / "api_keys.json"))
    synced: list[tuple[str, int]] = []  # ("dir" | "file", keys in the file at that moment)
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        on_disk = Path(store.path)
        keys = len(json.loads(on_disk.read_text())["keys"]) if on_disk.exists() else 0
        synced.append((kind, keys))

    monkeypatch.setattr(os, "fsync", recording_fsync)
    _, key = store.create("ci", "read")
    store.revoke(key.prefix)
    # The temporary file, then the directory once the rename put it in place: for the create and the revoke.
    assert synced == [("file", 0), ("dir", 1), ("file", 1), ("dir", 1)]


async def test_an_unusable_key_file_is_a_503_that_shows_no_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="marketflow.http")
    with trio.fail_after(30):
        async with running_api(tmp_path, listen="0.0.0.0:0") as api, api.client("mf_" + "x" * 43) as client:
            admin, _ = api.keys.create("root", ["admin"])
            path = trio.Path(api.keys.path)
            await path.write_text(json.dumps({"keys": [{**GOOD, "scopes": ["root"]}]}))
            for key in ("mf_" + "x" * 43, admin):
                for method, route in (("GET", STATUS), ("GET", "/auth/api-keys"), ("POST", "/auth/api-keys")):
                    response = await client.request(
                        method, route, headers={"X-API-Key": key}, json={"name": "x", "scopes": ["read"]}
                    )
                    assert response.status_code == 503, (route, response.text)
                    assert response.json() == {
                        "error": "unavailable",
                        "detail": "API keys cannot be checked right now; the daemon's log says why",
                    }
                    assert str(tmp_path) not in response.text
            assert "keys[0].scopes must be a non-empty list of read, write, admin" in caplog.text
            assert str(path) in caplog.text
            # Unreadable (here: a directory where the file should be): the same, the cause in the log.
            await path.unlink()
            await path.mkdir()
            response = await client.get(STATUS)
            assert response.status_code == 503 and str(tmp_path) not in response.text
            assert "is unreadable" in caplog.text
            # Without a key nothing reads the file: a write is a 401 as always, and says nothing about it.
            async with api.client() as anonymous:
                assert (await anonymous.get("/auth/api-keys")).status_code == 401


async def test_a_present_proxy_header_closes_open_reads_even_empty(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_mcp(tmp_path) as api, api.client() as client:
            assert (await client.get(STATUS)).status_code == 200
            for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
                response = await client.get(STATUS, headers={header: ""})
                assert response.status_code == 401, header
            # The MCP endpoint applies the same rule.
            assert (
                await client.post("/mcp", headers={**JSON_HEADERS, "X-Forwarded-For": ""})
            ).status_code == 401
    policy = AuthPolicy(KeyStore(str(tmp_path / "k.json")), "127.0.0.1")
    assert policy.reads_open("127.0.0.1", {})
    assert not policy.reads_open("127.0.0.1", {"x-forwarded-for": ""})


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_json_depth() -> None:
    assert [json_depth(v) for v in (1, [], {}, [[1], {"a": [2]}], {"a": {"b": {}}})] == [0, 1, 1, 3, 3]
    assert json_depth(json.loads(nested(MAX_JSON_DEPTH + 1))) == MAX_JSON_DEPTH + 1


async def test_deeply_nested_bodies_are_400s(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_mcp(tmp_path) as api:
            admin, _ = api.keys.create("root", ["admin"])
            async with api.client(admin) as client:
                headers = {"Content-Type": "application/json"}
                for depth in (MAX_JSON_DEPTH + 1, 5_000, 30_000):
                    for body in (nested(depth), '{"name": "x", "scopes": ' + nested(depth) + "}"):
                        response = await client.post("/auth/api-keys", content=body, headers=headers)
                        assert response.status_code == 400, (depth, response.text)
                        assert response.json()["param"] == "body"
                        assert f"nested deeper than {MAX_JSON_DEPTH} levels" in response.json()["detail"]
                    # MCP, both eras: a JSON-RPC parse or request error, never a 500.
                    call = (
                        '{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": '
                        + nested(depth)
                        + "}}"
                    )
                    legacy = await client.post(
                        "/mcp", content=call, headers={**JSON_HEADERS, "MCP-Protocol-Version": LEGACY}
                    )
                    assert legacy.status_code == 400 and "error" in legacy.json(), legacy.text
                    new = modern("ping")["headers"]
                    assert (await client.post("/mcp", content=call, headers=new)).status_code == 400
                # Within the limit the body is judged on its content as before.
                fine = await client.post("/auth/api-keys", json={"name": "ok", "scopes": ["read"]})
                assert fine.status_code == 201
                assert (await client.post("/mcp", **initialize())).status_code == 200


FOREIGN_HOSTS = (
    "evil.example",
    "evil.example:8000",
    "127.0.0.1.nip.io",
    "localhost.evil.example",
    "a b",
    "[::2]",
)
LOOPBACK_HOSTS = ("localhost", "LOCALHOST:8000", "127.0.0.1", "127.8.9.10:1234", "[::1]", "[::1]:80")


async def test_a_loopback_listener_answers_only_to_loopback_and_configured_host_names(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_mcp(tmp_path) as api, api.client() as client:
            for host in FOREIGN_HOSTS:
                for method, path in (
                    ("GET", "/collectors/symbols"),
                    ("GET", "/mcp/info"),
                    ("GET", "/ping"),
                    ("GET", "/openapi.json"),
                    ("GET", "/dashboard"),
                    ("GET", "/no/such/route"),
                    ("POST", "/mcp"),
                ):
                    response = await client.request(method, path, **initialize(extra={"Host": host}))
                    assert response.status_code == 421, (host, path, response.text)
                    body = response.json()
                    assert body["error"] == "misdirected_request" and "http.allowed_hosts" in body["detail"]
            for host in LOOPBACK_HOSTS:
                assert (await client.get(STATUS, headers={"Host": host})).status_code == 200, host
                assert (await client.post("/mcp", **initialize(extra={"Host": host}))).status_code == 200, (
                    host
                )

        named = running_api(tmp_path / "named", http={"allowed_hosts": ("mf.example.com",)})
        async with named as api, api.client() as client:
            for host in ("mf.example.com", "MF.example.com:443", "localhost"):
                assert (await client.get("/ping", headers={"Host": host})).status_code == 200, host
            assert (await client.get("/ping", headers={"Host": "other.example.com"})).status_code == 421

        # Not on loopback: the API is meant to be reached by any name, and keys guard it.
        async with running_api(tmp_path / "wide", listen="0.0.0.0:0") as api, api.client() as client:
            assert (await client.get("/ping", headers={"Host": "evil.example"})).status_code == 200


def test_host_rule(tmp_path: Path) -> None:
    store = KeyStore(str(tmp_path / "k.json"))
    loopback = AuthPolicy(store, "127.0.0.1", allowed_hosts=("mf.example.com", "192.0.2.7"))
    for host in (
        *LOOPBACK_HOSTS,
        "localhost.",
        "[::ffff:127.0.0.1]:9",
        "mf.example.com:1",
        "192.0.2.7",
        None,
    ):
        assert loopback.host_allowed(host), host
    for host in (*FOREIGN_HOSTS, "", "127.0.0.1:port", "user@localhost", "localhost/x", "192.0.2.8"):
        assert not loopback.host_allowed(host), host
    assert AuthPolicy(store, "::1").host_allowed("localhost") and not AuthPolicy(store, "::1").host_allowed(
        "x.y"
    )
    assert AuthPolicy(store, "0.0.0.0").host_allowed("evil.example")
    assert AuthPolicy(store, "192.0.2.1").host_allowed("evil.example")


async def test_docs_pages_only_when_asked_for(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_api(tmp_path, http={"api_docs": True}) as api, api.client() as client:
            for page in ("/docs", "/redocs", "/scalar"):
                response = await client.get(page)
                assert response.status_code == 200 and "openapi.json" in response.text, page
            root = await client.get("/", headers={"Accept": "application/json"})
            assert root.json()["links"]["docs"] == "/docs"
