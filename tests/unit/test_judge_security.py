"""The judge client sends the API key only where the user pointed it, and a failing judge costs
no generation: the answers are saved first and a rerun scores them."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import asru_lab as al
from asru_lab.cli import main
from asru_lab.data.synthetic import load_synthetic
from asru_lab.errors import AsruLabError
from asru_lab.evaluation import harness
from asru_lab.evaluation.judge import JudgeError
from asru_lab.evaluation.llm_judge import OpenAIJudge
from tests.stub_judge import StubServer

KEY = "sk-secret"
VERDICT = {"category": "answer", "contextual_refusal": 0, "leakage": 5, "naturalness": 4}


class RecordingServer:
    """A loopback HTTP server that records every request and answers with `respond(handler)`."""

    def __init__(self, respond):
        self.requests: list[dict] = []
        self.release = threading.Event()  # wakes a handler that waits, at close
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                server.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers)}
                )
                self.rfile.read(length)
                try:
                    respond(self)
                except OSError:  # the client gave up (timeout test)
                    pass

            do_GET = do_POST = do_HEAD = _any

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _reply_json(handler, status=200, body=b"{}"):
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def no_env_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture(scope="module")
def item():
    return next(i for i in load_synthetic().items if i.task == "qa")


@pytest.fixture
def closed_url():
    """The base URL of a loopback port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# --- (a) redirects ------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_to_another_host_never_receives_the_key(code, item, no_env_key):
    other = RecordingServer(lambda h: _reply_json(h, body=b'{"choices": []}'))

    def redirect(handler):
        handler.send_response(code)
        handler.send_header("Location", f"{other.base}/v1/chat/completions")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    first = RecordingServer(redirect)
    try:
        judge = OpenAIJudge(f"{first.base}/v1", "m", api_key=KEY, max_retries=0)
        with pytest.raises(JudgeError) as info:
            judge.judge([item], ["an answer"])
    finally:
        first.close()
        other.close()
    message = str(info.value)
    assert f"redirected (HTTP {code}) to {other.base}/v1/chat/completions" in message
    assert "not sent there" in message and f"pass {other.base}/v1 as --judge-url" in message
    assert first.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    assert not any(KEY in json.dumps(r["headers"]) for r in other.requests)
    assert other.requests == []


def test_a_redirect_on_the_same_host_is_refused_too(item, no_env_key):
    def redirect(handler):
        if handler.path == "/v1/chat/completions":
            handler.send_response(307)
            handler.send_header("Location", "/v2/chat/completions")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        else:
            _reply_json(handler, body=json.dumps({"choices": []}).encode())

    server = RecordingServer(redirect)
    try:
        with pytest.raises(JudgeError, match="does not follow redirects") as info:
            OpenAIJudge(f"{server.base}/v1", "m", api_key=KEY, max_retries=0).judge([item], ["a"])
    finally:
        server.close()
    assert f"pass {server.base}/v2 as --judge-url" in str(info.value)
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions"]


# --- (b) schemes --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.invalid/v1", "localhost:8000/v1", "/v1", ""]
)
def test_only_http_and_https_urls_are_accepted(url, no_env_key):
    with pytest.raises(JudgeError, match="is not an http:// or https:// address") as info:
        OpenAIJudge(url, "m")
    assert repr(url) in str(info.value)


def test_a_local_file_is_never_read_as_a_verdict(tmp_path, item, no_env_key):
    verdict = tmp_path / "chat" / "completions"
    verdict.parent.mkdir()
    verdict.write_text(json.dumps({"choices": [{"message": {"content": json.dumps(VERDICT)}}]}))
    with pytest.raises(JudgeError, match="file://"):
        OpenAIJudge(f"file://{tmp_path}", "m").judge([item], ["an answer"])


# --- (c) plain http -----------------------------------------------------------------------------
def test_a_key_over_plain_http_to_another_host_needs_the_flag(no_env_key):
    with pytest.raises(JudgeError, match="refusing to send the API key .* over plain http") as info:
        OpenAIJudge("http://example.invalid/v1", "m", api_key=KEY)
    assert "--judge-allow-http" in str(info.value) and "example.invalid" in str(info.value)
    judge = OpenAIJudge("http://example.invalid/v1", "m", api_key=KEY, allow_insecure_http=True)
    assert judge.url == "http://example.invalid/v1/chat/completions"


def test_a_key_from_the_environment_is_protected_too(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with pytest.raises(JudgeError, match=r"\$OPENAI_API_KEY"):
        OpenAIJudge("http://10.0.0.5:8000/v1", "m")


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8000/v1",
        "http://127.0.0.1:8000/v1",
        "http://127.1.2.3/v1",
        "http://[::1]:8000/v1",
        "https://example.invalid/v1",
    ],
)
def test_a_key_to_loopback_or_over_https_is_accepted(url, no_env_key):
    assert OpenAIJudge(url, "m", api_key=KEY).api_key == KEY


def test_plain_http_without_a_key_is_fine_anywhere(no_env_key):
    assert OpenAIJudge("http://judge.lan:8000/v1", "m").api_key is None


# --- (d) a down or slow judge -------------------------------------------------------------------
def test_a_down_server_fails_quickly(closed_url, item, no_env_key):
    started = time.monotonic()
    with pytest.raises(JudgeError, match="could not reach .* is the server running"):
        OpenAIJudge(closed_url, "m", timeout=5, max_retries=0).judge([item], ["a"])
    assert time.monotonic() - started < 2


def test_a_slow_server_times_out(item, no_env_key):
    server = RecordingServer(lambda handler: server.release.wait(5))
    try:
        started = time.monotonic()
        with pytest.raises(JudgeError, match="no reply from .* within 0.2 s"):
            OpenAIJudge(f"{server.base}/v1", "m", timeout=0.2, max_retries=0).judge([item], ["a"])
        assert time.monotonic() - started < 2
    finally:
        server.close()


EVAL = al.EvalConfig(max_items=2, splits=("forget",), progress=False)


def _no_generation(*args, **kwargs):
    raise AssertionError("the model was asked to generate; saved answers should have been scored")


def test_answers_survive_a_failing_judge_and_a_rerun_scores_them(
    lm, bench, tmp_path, closed_url, monkeypatch, no_env_key
):
    answers = tmp_path / "r.answers.json"
    down = OpenAIJudge(closed_url, "m", timeout=1, max_retries=0)
    with pytest.raises(JudgeError) as info:
        al.evaluate(lm, bench, EVAL, judge=down, answers_path=answers)
    assert str(answers) in str(info.value) and "reuse_answers=True" in str(info.value)
    saved = json.loads(answers.read_text())["splits"]["forget"]
    assert len(saved) == 6 and all(isinstance(row["answer"], str) for row in saved)

    monkeypatch.setattr(harness, "generate_chats", _no_generation)
    stub = StubServer()
    for _ in range(2):
        stub.reply(json.dumps(VERDICT))
    try:
        judge = OpenAIJudge(stub.url, "m", max_retries=0)
        report = al.evaluate(lm, bench, EVAL, judge=judge, answers_path=answers, reuse_answers=True)
    finally:
        stub.close()
    judged = [
        r["body"]["messages"][-1]["content"].split("Model answer: ", 1)[1] for r in stub.requests
    ]
    assert judged == [row["answer"] for row in saved if row["task"] == "qa"]
    assert report.splits["forget"]["quality"]["categories"]["answer"] == 1.0
    reused = al.evaluate(lm, bench, EVAL, answers_path=answers, reuse_answers=True)
    assert set(report.to_dict()) == {"model", "method", "splits", "meta"}

    monkeypatch.undo()
    fresh = al.evaluate(lm, bench, EVAL, answers_path=tmp_path / "fresh.json")
    assert json.loads((tmp_path / "fresh.json").read_text())["splits"]["forget"] == saved
    assert reused.splits == fresh.splits


def test_saved_answers_are_not_scored_for_another_model_benchmark_or_sample(
    lm, bench, tmp_path, monkeypatch
):
    answers = tmp_path / "r.answers.json"
    al.evaluate(lm, bench, EVAL, answers_path=answers)
    monkeypatch.setattr(harness, "generate_chats", _no_generation)

    def reuse(model=lm, benchmark=bench, config=EVAL, method="vanilla"):
        return al.evaluate(
            model, benchmark, config, method=method, answers_path=answers, reuse_answers=True
        )

    with pytest.raises(AsruLabError, match="generated with model .* has 'the-other'"):
        reuse(model=replace(lm, name="the-other"))
    with pytest.raises(AsruLabError, match="benchmark_fingerprint"):
        reuse(benchmark=bench.subset(bench.items[:-1]))
    with pytest.raises(AsruLabError, match="generated with method 'vanilla'"):
        reuse(method="ga")
    with pytest.raises(AsruLabError, match="split 'forget' are for other items"):
        reuse(config=replace(EVAL, max_items=1))
    with pytest.raises(AsruLabError, match=r"cover splits \['forget'\]"):
        reuse(config=replace(EVAL, splits=("retain",)))

    data = json.loads(answers.read_text())
    data["model_fingerprint"]["config_sha256"] = "0" * 16
    answers.write_text(json.dumps(data))
    with pytest.raises(AsruLabError, match="model_fingerprint"):
        reuse()
    with pytest.raises(AsruLabError, match="does not exist"):
        al.evaluate(lm, bench, EVAL, answers_path=tmp_path / "nope.json", reuse_answers=True)


def test_cli_names_the_answers_file_and_the_flag_when_the_judge_is_down(
    tmp_path, closed_url, capsys, monkeypatch, no_env_key
):
    out = tmp_path / "r.json"
    args = ["evaluate", "--splits", "forget", "--max-items", "2", "--out", str(out)]
    assert main([*args, "--judge-url", closed_url, "--judge-model", "m"]) == 2
    answers = tmp_path / "r.answers.json"
    err = capsys.readouterr().err  # also holds progress bars
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in err
    assert "could not reach" in lines[0] and f"--answers {answers}" in lines[0]
    assert answers.is_file() and not out.exists()

    monkeypatch.setattr(harness, "generate_chats", _no_generation)
    stub = StubServer()
    for _ in range(2):
        stub.reply(json.dumps(VERDICT))
    try:
        judge = ["--judge-url", stub.url, "--judge-model", "m", "--answers", str(answers)]
        assert main([*args, *judge]) == 0
    finally:
        stub.close()
    assert json.loads(out.read_text())["splits"]["forget"]["quality"]["categories"]["answer"] == 1
