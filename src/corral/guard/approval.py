"""Who answers an ``ask`` verdict: a person at a terminal, a function, or a webhook.

Every approver fails closed: only an explicit yes approves. EOF, a timeout, a
bad reply or a transport error all mean no. An exception raised by a user
callback propagates, so the command still does not run.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol, TextIO, runtime_checkable

from rich.console import Console
from rich.markup import escape
from rich.prompt import Confirm, InvalidResponse

from corral.errors import CorralError

if TYPE_CHECKING:
    from corral.guard.decision import Decision

_MAX_REPLY = 64 * 1024


class ApprovalError(CorralError):
    """An approver could not give an answer; the guard treats it as a deny."""


@runtime_checkable
class Approver(Protocol):
    def approve(self, decision: Decision) -> bool:
        """True only to let the command run."""
        ...


class CallbackApprover:
    """Asks a Python function. Anything but ``True`` is a no."""

    def __init__(self, callback: Callable[[Decision], bool]) -> None:
        self._callback = callback

    def approve(self, decision: Decision) -> bool:
        return self._callback(decision) is True


def _visible(text: str) -> str:
    """Control characters (ANSI escapes, carriage returns) shown as \\xNN, not obeyed."""
    return "".join(c if c.isprintable() or c == "\n" else f"\\x{ord(c):02x}" for c in text)


class _YesNo(Confirm):
    """Confirm that also takes 'yes'/'no'; anything else asks again, EOF gives the default."""

    def process_response(self, value: str) -> bool:
        answer = value.strip().lower()
        if answer in ("y", "yes"):
            return True
        if answer in ("n", "no"):
            return False
        raise InvalidResponse(self.validate_error_message)


class CliApprover:
    """Shows the findings and asks y/N on ``stream`` (stdin by default). EOF means no."""

    def __init__(self, stream: TextIO | None = None, console: Console | None = None) -> None:
        self._stream = stream
        self._console = console or Console(stderr=True)

    def approve(self, decision: Decision) -> bool:
        con = self._console
        # The command is the agent's text: it must not restyle or hide itself from the human
        # (rich markup such as [black on black], terminal escape sequences).
        con.print("[bold yellow]Guard asks about:[/]", escape(_visible(decision.command)),
                  markup=True, highlight=False)  # fmt: skip
        for f in decision.findings:
            line = f"  - {f.rule_id} ({f.category}, {f.severity}, {f.attack}): {f.explanation}"
            con.print(_visible(line), markup=False, highlight=False)
        try:
            answer = _YesNo.ask(
                "Allow this command?", console=con, default=False, stream=self._stream
            )
        except (EOFError, OSError):
            return False  # stdin closed or unreadable: nobody said yes
        return answer is True


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        # A redirect could send the decision elsewhere or turn the POST into a GET.
        return None


class WebhookApprover:
    """POSTs ``{"decision": {...}}`` as JSON and expects ``{"approve": true|false}``.

    Only http/https URLs; no proxies from the environment and no redirects, so
    the decision goes exactly where configured. Any failure is a no.
    """

    def __init__(
        self, url: str, *, timeout: float = 10.0, headers: Mapping[str, str] | None = None
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook url must be http:// or https://, got {url!r}")
        if not 0 < timeout <= 300:
            raise ValueError("webhook timeout must be more than 0 and at most 300 seconds")
        self.url = url
        self.timeout = timeout
        self.headers = dict(headers or {})
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)
        self.last_error: str | None = None

    def approve(self, decision: Decision) -> bool:
        try:
            return self._ask(decision)
        except ApprovalError as exc:
            self.last_error = str(exc)
            return False

    def _ask(self, decision: Decision) -> bool:
        body = json.dumps({"decision": decision.to_dict()}).encode("utf-8")
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", **self.headers},
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                if response.status != 200:
                    raise ApprovalError(f"webhook answered HTTP {response.status}")
                raw = response.read(_MAX_REPLY + 1)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            # URLError/HTTPError, garbled HTTP, timeouts, refused connections, bad URLs.
            raise ApprovalError(f"webhook failed: {exc}") from exc
        if len(raw) > _MAX_REPLY:
            raise ApprovalError("webhook reply too large")
        try:
            reply = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApprovalError(f"webhook reply is not JSON: {exc}") from exc
        if not isinstance(reply, dict) or not isinstance(reply.get("approve"), bool):
            raise ApprovalError('webhook reply must be {"approve": true|false}')
        return reply["approve"]
