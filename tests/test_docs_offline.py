"""/docs and /redoc render without internet: every asset the pages load is served by the server itself."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings


class Assets(HTMLParser):
    """The URLs a browser fetches for a page: script src, link href, img src."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (tag, name) in {("script", "src"), ("link", "href"), ("img", "src")}:
                self.urls.append(value)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with TestClient(create_app(Settings(data_dir=tmp_path_factory.mktemp("docs")))) as c:
        yield c


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_page_loads_only_assets_of_this_server(client, page):
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    parser = Assets()
    parser.feed(html)
    assert any(u.endswith(".js") for u in parser.urls)
    for url in parser.urls:
        assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from elsewhere"
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url
    # nothing in the inline script reaches out either (CDN, validator badge, web fonts)
    assert not re.findall(r"https?://", html), re.findall(r"https?://\S+", html)
    # the spec the page loads is this server's
    assert "'/openapi.json'" in html or '"/openapi.json"' in html
    assert client.get("/openapi.json").json()["info"]["title"] == "fal-onprem"


def test_swagger_script_is_the_real_bundle(client):
    js = client.get("/docs-assets/swagger-ui-bundle.js")
    assert js.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert b"SwaggerUIBundle" in js.content
