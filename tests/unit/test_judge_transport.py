"""The judge's key and verdict never pass through a proxy that could read or forge them: a
loopback judge is reached directly whatever the proxy variables say, a plain-http judge on
another host too, and an https judge only through a proxy's encrypted tunnel (CONNECT)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from asru_lab.data.synthetic import load_synthetic
from asru_lab.evaluation.judge import JudgeError
from asru_lab.evaluation.llm_judge import OpenAIJudge

KEY = "sk-secret"
REAL = {"category": "answer", "contextual_refusal": 0, "leakage": 5, "naturalness": 4}
FORGED = {"category": "contextual_refusal", "contextual_refusal": 5, "leakage": 5, "naturalness": 5}
PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy")
PROXY_VARIABLES += ("ALL_PROXY", "no_proxy", "NO_PROXY")


def _chat_reply(verdict: dict) -> bytes:
    return json.dumps({"choices": [{"message": {"content": json.dumps(verdict)}}]}).encode()


class Server:
    """A local HTTP server bound to `host` that records every request and answers POSTs with
    `verdict`, CONNECTs (a proxy asked for a tunnel) with 502."""

    def __init__(self, host: str, verdict: dict):
        self.requests: list[dict] = []
        recorded = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                recorded.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body,
                    }
                )
                if self.command == "CONNECT":
                    self.send_response(502)
                    self.end_headers()
                    return
                data = _chat_reply(verdict)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_CONNECT = _any

            def log_message(self, *args):
                pass

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("Bound", (ThreadingHTTPServer,), {"address_family": family})
        self.server = server_class((host, 0), Handler)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


OTHER_HOST = "judge-host.test"  # not loopback by name: a plain-http judge "on another host"


def _resolve_to_loopback(monkeypatch, name: str) -> None:
    """Make `name` resolve to 127.0.0.1 inside this test, so that a judge "on another host"
    is served by a loopback server: no request of these tests leaves the machine."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        return real("127.0.0.1" if host == name else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture(scope="module")
def item():
    return next(i for i in load_synthetic().items if i.task == "qa")


@pytest.fixture
def proxy(monkeypatch):
    """A forging proxy on 127.0.0.1 and a clean environment: no proxy variable, no no_proxy."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = Server("127.0.0.1", FORGED)
    yield server
    server.close()


LOOPBACK = [
    ("127.0.0.1", "127.0.0.1"),
    ("localhost", "127.0.0.1"),
    ("127.0.0.2", "127.0.0.2"),  # all of 127.0.0.0/8 is loopback
    pytest.param(
        "::1",
        "[::1]",
        marks=pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here"),
    ),
]


@pytest.mark.parametrize(("bind", "host"), LOOPBACK)
@pytest.mark.parametrize("variable", ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"])
def test_a_loopback_judge_never_goes_through_a_proxy(
    bind, host, variable, proxy, item, monkeypatch
):
    monkeypatch.setenv(variable, f"http://127.0.0.1:{proxy.port}")
    judge_server = Server(bind, REAL)
    try:
        judge = OpenAIJudge(f"http://{host}:{judge_server.port}/v1", "m", api_key=KEY)
        verdict = judge.judge_one(item, "an answer")
    finally:
        judge_server.close()
    assert proxy.requests == []  # neither the key nor the question reached the proxy
    assert (verdict.category, verdict.contextual_refusal) == ("answer", 0)  # the real verdict
    assert judge_server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"


def test_every_proxy_variable_at_once_changes_nothing_for_loopback(proxy, item, monkeypatch):
    for name in PROXY_VARIABLES[:6]:
        monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
    judge_server = Server("127.0.0.1", REAL)
    try:
        judge = OpenAIJudge(f"http://localhost:{judge_server.port}/v1", "m", api_key=KEY)
        verdicts = judge.judge([item, item], ["one", "two"])
    finally:
        judge_server.close()
    assert proxy.requests == [] and [v.category for v in verdicts] == ["answer", "answer"]
    assert len(judge_server.requests) == 2


def test_plain_http_to_another_host_goes_direct_not_through_the_proxy(proxy, item, monkeypatch):
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("ALL_PROXY", f"http://127.0.0.1:{proxy.port}")
    _resolve_to_loopback(monkeypatch, OTHER_HOST)
    judge_server = Server("127.0.0.1", REAL)
    try:
        url = f"http://{OTHER_HOST}:{judge_server.port}/v1"
        judge = OpenAIJudge(url, "m", api_key=KEY, allow_insecure_http=True)
        verdict = judge.judge_one(item, "an answer")
    finally:
        judge_server.close()
    assert proxy.requests == [] and verdict.category == "answer"
    assert judge_server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"


def test_an_unreachable_plain_http_judge_says_the_proxy_was_not_used(proxy, item, monkeypatch):
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    _resolve_to_loopback(monkeypatch, OTHER_HOST)
    judge = OpenAIJudge(
        f"http://{OTHER_HOST}:{port}/v1", "m", api_key=KEY, allow_insecure_http=True, max_retries=0
    )
    with pytest.raises(JudgeError, match=r"could not reach .* never through \$http_proxy"):
        judge.judge_one(item, "an answer")
    assert proxy.requests == []


@pytest.mark.parametrize("variable", ["https_proxy", "HTTPS_PROXY"])
def test_an_https_judge_uses_the_proxy_only_as_an_encrypted_tunnel(
    variable, proxy, item, monkeypatch
):
    monkeypatch.setenv(variable, f"http://127.0.0.1:{proxy.port}")
    judge = OpenAIJudge("https://judge.example.invalid/v1", "m", api_key=KEY, max_retries=0)
    with pytest.raises(JudgeError, match="could not reach"):  # this proxy refuses the tunnel
        judge.judge_one(item, "an answer")
    [request] = proxy.requests
    assert request["method"] == "CONNECT" and request["path"] == "judge.example.invalid:443"
    assert KEY not in json.dumps(request) and "Authorization" not in request["headers"]
    assert "Reference value" not in request["body"]  # the question stays inside TLS too
