"""The dashboard's files over the app (no browser): types, CSP, caching, no key needed, `/` for browsers."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import attrs
import pytest
from quart_trio import QuartTrio

from marketflow.api.app import create_app
from marketflow.api.auth import AuthPolicy
from marketflow.api.keys import KeyStore, key_store_path
from marketflow.api.queries import QueryContext
from marketflow.config import default_config
from marketflow.daemon import Daemon

FILES = {
    "/dashboard": "text/html",
    "/dashboard/app.js": "text/javascript",
    "/dashboard/style.css": "text/css",
    "/dashboard/favicon.svg": "image/svg+xml",
}
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"


def make_app(tmp_path: Path, listen_host: str = "127.0.0.1") -> QuartTrio:
    """The real app over a daemon that is built but not started (these routes read no market data)."""
    base = default_config(env={})
    config = attrs.evolve(
        base,
        daemon=attrs.evolve(base.daemon, state_dir=str(tmp_path)),
        storage=attrs.evolve(base.storage, url=f"sqlite:///{tmp_path}/marketflow.db"),
    )
    policy = AuthPolicy(KeyStore(key_store_path(str(tmp_path))), listen_host, public_reads=False)
    return create_app(QueryContext(Daemon(config)), policy)


@pytest.mark.parametrize(("path", "content_type"), FILES.items())
async def test_files_have_their_type_a_strict_csp_and_revalidate(
    tmp_path: Path, path: str, content_type: str
) -> None:
    client = make_app(tmp_path).test_client()
    response = await client.get(path)
    assert response.status_code == 200
    assert response.mimetype == content_type
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "unsafe" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-cache"
    etag = response.headers["ETag"]
    assert len(await response.get_data()) > 0
    again = await client.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304 and await again.get_data() == b""


async def test_unknown_files_are_json_404s(tmp_path: Path) -> None:
    client = make_app(tmp_path).test_client()
    for path in ("/dashboard/nope.js", "/dashboard/index.html", "/dashboard/..%2fapp.py"):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert (await response.get_json())["error"] == "not_found"


async def test_the_page_needs_no_key_but_its_data_does(tmp_path: Path) -> None:
    client = make_app(tmp_path, listen_host="0.0.0.0").test_client()
    assert (await client.get("/dashboard")).status_code == 200
    assert (await client.get("/dashboard/app.js")).status_code == 200
    assert (await client.get("/collectors/status")).status_code == 401


async def test_root_sends_browsers_to_the_dashboard_and_answers_json_otherwise(tmp_path: Path) -> None:
    client = make_app(tmp_path).test_client()
    browser = await client.get("/", headers={"Accept": BROWSER_ACCEPT})
    assert browser.status_code == 303
    assert browser.headers["Location"] == "dashboard"  # relative: right behind a prefixing proxy too
    for accept in (None, "*/*", "application/json", "application/json, text/html"):
        response = await client.get("/", headers={"Accept": accept} if accept else {})
        assert response.status_code == 200, accept
        body = await response.get_json()
        assert body["name"] == "marketflow" and body["links"]["openapi"] == "/openapi.json"


async def test_the_dashboard_stays_out_of_the_openapi_document(tmp_path: Path) -> None:
    client = make_app(tmp_path).test_client()
    paths = (await (await client.get("/openapi.json")).get_json())["paths"]
    assert "/" in paths and not [p for p in paths if p.startswith("/dashboard")]


def test_the_page_loads_nothing_from_elsewhere_and_nothing_inline() -> None:
    folder = resources.files("marketflow.api").joinpath("dashboard")
    html = folder.joinpath("index.html").read_text()
    # Every script, style sheet and icon is one of our files; no inline script, style or handler (the
    # CSP would block them anyway, so this keeps the page honest about what it needs).
    assert re.findall(r'(?:src|href)="([^"]+)"', html) == [
        "dashboard/favicon.svg",
        "dashboard/style.css",
        "dashboard/app.js",
        "openapi.json",
    ]
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html) is None
    assert re.search(r"\sstyle=|\son[a-z]+=", html) is None
    script = folder.joinpath("app.js").read_text()
    assert re.findall(r"https?://[^\s\"']+", script) == ["http://www.w3.org/2000/svg"]  # a namespace name
    for needle in ("eval(", "innerHTML", "localStorage", "document.write"):
        assert needle not in script, needle
