"""The API client reads proxy settings from the environment once, and nothing else from it."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.errors import RequestRefused
from tasks.sandbox.server import SandboxServer
from tasks.videosdk.client import ApiClient
from tasks.videosdk.tokens import TokenMinter
from tests.conftest import API_KEY, SECRET

PROXY_VARS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy")


class FakeProxy(http.server.ThreadingHTTPServer):
    """A forward proxy (or an API) that answers every request itself with ``status``, and
    remembers each request line and its headers."""

    def __init__(self, status: int = 200, location: str = "") -> None:
        self.seen: list[str] = []
        self.headers: list[dict[str, str]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.seen.append(self.path)
                proxy.headers.append(dict(self.headers))
                body = json.dumps({"status": "started"}).encode()
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProxy]:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    server = FakeProxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def client(base_url: str) -> ApiClient:
    minter = TokenMinter(api_key=API_KEY, secret=SECRET)
    return ApiClient(base_url=base_url, minter=minter, connect_timeout_s=1, read_timeout_s=2)


def test_an_http_proxy_from_the_environment_carries_the_calls(
    proxy: FakeProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    answer = client("http://api.videosdk.invalid").start_recording({"roomId": "r"})
    assert answer.http_status == 200
    assert proxy.seen == ["http://api.videosdk.invalid/v2/recordings/start"]


def test_no_proxy_sends_the_calls_straight_to_the_api(
    proxy: FakeProxy, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert client(sandbox.url).start_recording({"roomId": "r"}).http_status == 200
    assert proxy.seen == []


def test_a_netrc_entry_never_replaces_the_token(
    proxy: FakeProxy, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password not-a-token\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert client(sandbox.url).start_recording({"roomId": "r"}).http_status == 200


def test_a_redirect_is_a_refusal_not_a_success() -> None:
    server = FakeProxy(status=302, location="http://127.0.0.1:1/elsewhere")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(RequestRefused) as caught:
            client(server.url).start_recording({"roomId": "r"})
        assert caught.value.http_status == 302 and not caught.value.retryable
        assert server.seen == ["/v2/recordings/start"]  # not followed
        sent = server.headers[0]
        assert sent["Authorization"].count(".") == 2 and sent["Content-Type"] == "application/json"
        assert sent["User-Agent"].startswith("python-requests/")  # the session's own headers too
    finally:
        server.shutdown()
        server.server_close()
