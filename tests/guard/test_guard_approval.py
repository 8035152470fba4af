"""Approvers fail closed: only an explicit yes approves."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest
from rich.console import Console

from corral.guard import Approver, CliApprover, Guard, WebhookApprover
from corral.policy import Verdict


def asked_decision():  # type: ignore[no-untyped-def]
    decision = Guard().check("sudo ls")
    assert decision.verdict == Verdict.ASK
    return decision


def quiet_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=False)


# --- CLI prompt ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("y\n", True), ("yes\n", True), ("n\n", False), ("\n", False), ("", False)],
)
def test_cli_approver_reads_the_given_stream(answer: str, expected: bool) -> None:
    console = quiet_console()
    approver = CliApprover(stream=io.StringIO(answer), console=console)
    assert isinstance(approver, Approver)
    assert approver.approve(asked_decision()) is expected
    assert "privesc.sudo" in console.file.getvalue()  # type: ignore[attr-defined]


def test_cli_approver_garbage_then_eof_is_no() -> None:
    approver = CliApprover(stream=io.StringIO("maybe\n"), console=quiet_console())
    assert approver.approve(asked_decision()) is False


def test_cli_approver_shows_the_command_verbatim() -> None:
    console = quiet_console()
    decision = Guard().check("sudo [black on black]xmrig[/] \x1b[8mhidden\rls")
    CliApprover(stream=io.StringIO("n\n"), console=console).approve(decision)
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "[black on black]xmrig[/]" in shown
    assert "\x1b" not in shown and "\\x1b[8mhidden\\x0dls" in shown


# --- webhook against a real local server ---------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    replies: ClassVar[list[tuple[int, bytes]]] = []
    received: ClassVar[list[dict[str, Any]]] = []
    delay: ClassVar[threading.Event | None] = None

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.received.append(json.loads(self.rfile.read(length)))
        if self.delay is not None:
            self.delay.wait(5)
        status, body = self.replies.pop(0) if self.replies else (200, b'{"approve": true}')
        if status == 0:  # not HTTP at all
            self.wfile.write(body)
            return
        self.send_response(status)
        if status in (301, 302):
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.replies = []
    _Handler.received = []
    _Handler.delay = None
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/approve"
    finally:
        if _Handler.delay is not None:
            _Handler.delay.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_webhook_approves_and_receives_the_decision(server: str) -> None:
    _Handler.replies = [(200, b'{"approve": true}')]
    guard = Guard(approver=WebhookApprover(server, timeout=5))
    assert guard.authorize("sudo ls").verdict == Verdict.ALLOW
    sent = _Handler.received[0]["decision"]
    assert sent["verdict"] == "ask" and sent["findings"][0]["rule_id"] == "privesc.sudo"


@pytest.mark.parametrize(
    "reply",
    [
        (200, b'{"approve": false}'),
        (200, b'{"approve": "true"}'),
        (200, b'{"approve": 1}'),
        (200, b"[true]"),
        (200, b"not json"),
        (200, b"\xff\xfe"),
        (500, b'{"approve": true}'),
        (302, b'{"approve": true}'),
        (0, b"garbage\r\n\r\n"),
        (200, b'{"approve": true, "pad": "' + b"x" * 70_000 + b'"}'),
    ],
)
def test_webhook_failures_deny(server: str, reply: tuple[int, bytes]) -> None:
    _Handler.replies = [reply]
    approver = WebhookApprover(server, timeout=5)
    assert approver.approve(asked_decision()) is False
    if reply[1] != b'{"approve": false}':
        assert approver.last_error


def test_webhook_timeout_denies(server: str) -> None:
    _Handler.delay = threading.Event()
    approver = WebhookApprover(server, timeout=0.3)
    decision = Guard(approver=approver).authorize("sudo ls")
    assert decision.verdict == Verdict.DENY
    assert approver.last_error and "webhook failed" in approver.last_error


def test_webhook_connection_refused_denies() -> None:
    # Bind then close to get a port nothing listens on.
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    port = httpd.server_address[1]
    httpd.server_close()
    approver = WebhookApprover(f"http://127.0.0.1:{port}/", timeout=2)
    assert approver.approve(asked_decision()) is False


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/", "127.0.0.1:80"])
def test_webhook_refuses_non_http_urls(url: str) -> None:
    with pytest.raises(ValueError):
        WebhookApprover(url)
