"""pipeline.delivery: alerts reach a real command and a real local webhook at least once,
with their event_id as idempotency key; failing receivers are retried with a doubling,
capped wait, alone, and across restarts; the Deliverer thread delivers when woken."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

import pipeline.delivery as delivery
from pipeline.alerts import alert_text, pending_alerts, put_in_outbox, raise_alerts
from pipeline.budgets import Budget, Crossing
from pipeline.config import Home, init_home, load_home
from pipeline.delivery import Deliverer, deliver_due
from pipeline.settings import AlertSettings
from tests.conftest import gone

FAR = 1e12  # a `now` past any `due`: every outbox entry is tried
EVENT = Crossing(Budget("all", "daily", "tokens", 1000, 0.8), date(2025, 8, 29), 1,
                 850).event("2025-08-29T12:00:00Z")
ID = "tally-budget:all:daily:2025-08-29:TOKEN_BUDGET_WARNING"


@dataclass
class Request:  # what the webhook received: path, two headers, the JSON body
    path: str
    key: str | None
    content_type: str | None
    body: dict[str, Any]


@dataclass
class Hook:
    """A local webhook: answers the queued statuses first, then 200."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hook]:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    state = Hook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append(Request(self.path, self.headers.get("Idempotency-Key"),
                                          self.headers.get("Content-Type"), body))
            self.send_response(state.statuses.pop(0) if state.statuses else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with serving(Handler) as state.url:
        yield state


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A server on a free local port, in a thread; its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/alerts"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def home_with(root: Path, **alerts: Any) -> Home:
    """A fresh home at `root` whose [alerts] are `alerts`."""
    init_home(root)
    return replace(load_home(root), alerts=AlertSettings(**alerts))


def entries(home: Home) -> list[dict[str, Any]]:
    return [entry for _, entry in pending_alerts(home)]


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not (done := condition()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return done


def counting_command(runs: Path) -> str:
    """A command that appends one line per run to `runs`."""
    return f"cat > /dev/null; echo run >> {shlex.quote(str(runs))}"


# ---------------------------------------------------------------- the webhook


def test_webhook_is_retried_until_it_takes_the_alert(tmp_path: Path, hook: Hook) -> None:
    home = home_with(tmp_path, webhook=hook.url, timeout=5)
    hook.statuses = [500, 500]
    put_in_outbox(home, EVENT)
    notes: list[str] = []
    for attempt in (1, 2):
        assert deliver_due(home, notes.append, now=FAR) == 1
        [entry] = entries(home)
        assert (entry["attempts"], entry["left"], entry["event"]) == (attempt, ["webhook"], EVENT)
        assert len(notes) == attempt
        assert f"alert {ID}: webhook failed (attempt {attempt}): the webhook answered 500" \
            in notes[-1]
    assert deliver_due(home, notes.append, now=FAR) == 0
    assert entries(home) == [] and len(notes) == 2
    assert len(hook.requests) == 3
    for request in hook.requests:
        assert request.path == "/alerts"
        assert request.key == ID == EVENT["event_id"]
        assert request.content_type == "application/json"
        assert request.body == {**EVENT, "text": alert_text(EVENT)}
        assert request.body["text"].startswith("TOKEN_BUDGET_WARNING: all daily budget")


def test_an_alert_is_not_tried_before_it_is_due(tmp_path: Path, hook: Hook) -> None:
    home = home_with(tmp_path, webhook=hook.url)
    hook.statuses = [500]
    put_in_outbox(home, EVENT)
    assert deliver_due(home, lambda _: None) == 1
    [entry] = entries(home)
    assert deliver_due(home, lambda _: None, now=entry["due"] - 0.01) == 1
    assert len(hook.requests) == 1 and entries(home) == [entry]
    assert deliver_due(home, lambda _: None, now=entry["due"]) == 0
    assert len(hook.requests) == 2 and entries(home) == []


def test_backoff_doubles_up_to_retry_max_seconds(tmp_path: Path, hook: Hook) -> None:
    home = home_with(tmp_path, webhook=hook.url, retry_max_seconds=5)
    hook.statuses = [500] * 6
    put_in_outbox(home, EVENT)
    notes: list[str] = []
    for attempt, wait in enumerate((1, 2, 4, 5, 5, 5), start=1):
        before = time.time()
        assert deliver_due(home, notes.append, now=FAR) == 1
        after = time.time()
        [entry] = entries(home)
        assert entry["attempts"] == attempt
        assert before + wait <= entry["due"] <= after + wait
        assert notes[-1].endswith(f"; retrying in {wait} s")
    assert len(hook.requests) == 6


def test_an_unreachable_webhook_is_a_failed_attempt(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()  # nothing listens there now
    home = home_with(tmp_path, webhook=f"http://127.0.0.1:{port}/", timeout=5)
    put_in_outbox(home, EVENT)
    notes: list[str] = []
    assert deliver_due(home, notes.append) == 1
    assert entries(home)[0]["attempts"] == 1
    assert "webhook failed (attempt 1): the webhook could not be reached" in notes[0]


class NotHttp(BaseHTTPRequestHandler):
    def handle(self) -> None:
        self.request.recv(65536)
        self.request.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")


def test_a_webhook_that_does_not_speak_http_is_a_failed_attempt(tmp_path: Path) -> None:
    with serving(NotHttp) as url:
        home = home_with(tmp_path, webhook=url)
        put_in_outbox(home, EVENT)
        notes: list[str] = []
        assert deliver_due(home, notes.append) == 1  # raises BadStatusLine today
    assert entries(home)[0]["attempts"] == 1 and "webhook failed" in notes[0]


# ---------------------------------------------------------------- the command


def test_command_gets_the_alert_on_stdin_and_its_id_in_the_environment(tmp_path: Path) -> None:
    stdin, alert_id = tmp_path / "stdin.json", tmp_path / "id.txt"
    command = (f"cat > {shlex.quote(str(stdin))}; "
               f'printf %s "$TALLY_ALERT_ID" > {shlex.quote(str(alert_id))}')
    home = home_with(tmp_path / "home", command=command)
    put_in_outbox(home, EVENT)
    notes: list[str] = []
    assert deliver_due(home, notes.append) == 0
    assert orjson.loads(stdin.read_bytes()) == {**EVENT, "text": alert_text(EVENT)}
    assert alert_id.read_text() == ID
    assert entries(home) == [] and notes == []


def test_a_failing_command_is_retried_and_its_exit_code_named(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    failing = f"{counting_command(runs)}; echo first line >&2; echo boom >&2; exit 3"
    home = home_with(tmp_path / "home", command=failing)
    put_in_outbox(home, EVENT)
    notes: list[str] = []
    assert deliver_due(home, notes.append, now=FAR) == 1
    assert deliver_due(home, notes.append, now=FAR) == 1
    assert runs.read_text() == "run\n" * 2
    assert [n.split(": ", 1)[1] for n in notes] == [
        "command failed (attempt 1): the command exited 3: boom; retrying in 1 s",
        "command failed (attempt 2): the command exited 3: boom; retrying in 2 s"]
    assert entries(home)[0]["left"] == ["command"]
    fixed = replace(home, alerts=AlertSettings(command=counting_command(runs)))
    assert deliver_due(fixed, notes.append, now=FAR) == 0
    assert runs.read_text() == "run\n" * 3 and entries(fixed) == [] and len(notes) == 2


def test_a_command_past_its_timeout_fails(tmp_path: Path) -> None:
    home = home_with(tmp_path, command="exec sleep 30", timeout=0.5)
    put_in_outbox(home, EVENT)
    notes: list[str] = []
    started = time.monotonic()
    assert deliver_due(home, notes.append) == 1
    assert time.monotonic() - started < 20  # killed, not waited for
    assert "command failed (attempt 1): the command did not finish within 0.5 s" in notes[0]
    assert entries(home)[0]["attempts"] == 1


def test_a_timed_out_command_leaves_no_process_behind(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    command = f"sh -c 'echo $$ > {shlex.quote(str(pid_file))}; exec sleep 30'; true"
    home = home_with(tmp_path / "home", command=command, timeout=0.5)
    put_in_outbox(home, EVENT)
    deliver_due(home, lambda _: None)
    pid = int(pid_file.read_text())
    try:
        assert wait_for(lambda: gone(pid), 2)
    finally:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- both, restarts, the thread


def test_only_the_failed_receiver_is_tried_again(tmp_path: Path, hook: Hook) -> None:
    runs = tmp_path / "runs"
    home = home_with(tmp_path / "home", command=counting_command(runs), webhook=hook.url)
    hook.statuses = [503]
    put_in_outbox(home, EVENT)
    notes: list[str] = []
    assert deliver_due(home, notes.append, now=FAR) == 1
    assert entries(home)[0]["left"] == ["webhook"]
    assert len(notes) == 1 and "webhook failed (attempt 1): the webhook answered 503" in notes[0]
    assert deliver_due(home, notes.append, now=FAR) == 0
    assert runs.read_text() == "run\n"  # the command took it the first time: not run again
    assert len(hook.requests) == 2 and entries(home) == []


def test_pending_alerts_survive_a_restart(tmp_path: Path, hook: Hook) -> None:
    runs = tmp_path / "runs"
    first = home_with(tmp_path / "home")  # raised, then killed before any delivery
    crossing = Crossing(Budget("all", "daily", "tokens", 1000, 0.8), date(2025, 8, 29), 2, 1200)
    [event] = raise_alerts(first, [crossing], set())
    again = replace(load_home(tmp_path / "home"),
                    alerts=AlertSettings(command=counting_command(runs), webhook=hook.url))
    assert deliver_due(again, lambda _: None) == 0
    assert runs.read_text() == "run\n"
    assert [r.body["event_id"] for r in hook.requests] == [event["event_id"]]
    assert entries(again) == []


def test_the_deliverer_delivers_when_woken_and_stops(tmp_path: Path, hook: Hook,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery, "IDLE_WAKE_SECONDS", 600.0)  # only wake() and stop() act
    home = home_with(tmp_path, webhook=hook.url)
    notes: list[str] = []
    deliverer = Deliverer(home, notes.append).start()
    try:
        put_in_outbox(home, EVENT)
        deliverer.wake()
        assert wait_for(lambda: len(hook.requests) == 1 and entries(home) == [])
    finally:
        deliverer.stop(timeout=10)
    assert not any(t.name == "tally-alerts" and t.is_alive() for t in threading.enumerate())
    assert hook.requests[0].key == ID and notes == []


def test_the_deliverer_retries_on_its_own(tmp_path: Path, hook: Hook) -> None:
    home = home_with(tmp_path, webhook=hook.url)
    hook.statuses = [500]
    notes: list[str] = []
    put_in_outbox(home, EVENT)
    deliverer = Deliverer(home, notes.append).start()
    try:
        assert wait_for(lambda: len(hook.requests) == 2 and entries(home) == [])
    finally:
        deliverer.stop(timeout=10)
    assert len(notes) == 1 and "webhook failed (attempt 1)" in notes[0]


def test_without_receivers_the_outbox_is_cleared(tmp_path: Path) -> None:
    home = home_with(tmp_path)
    put_in_outbox(home, EVENT)
    put_in_outbox(home, {**EVENT, "event_id": "other"}, attempts=2, due=FAR, left=["webhook"])
    deliverer = Deliverer(home, lambda _: None).start()  # nothing to run: no thread
    deliverer.wake()
    deliverer.stop()
    assert len(entries(home)) == 2
    notes: list[str] = []
    assert deliver_due(home, notes.append) == 1  # the one due later waits
    assert deliver_due(home, notes.append, now=FAR) == 0
    assert entries(home) == [] and notes == []


def test_a_receiver_failing_for_days_keeps_its_capped_wait(tmp_path: Path, hook: Hook) -> None:
    """Attempt 2,000 waits retry_max_seconds like attempt 20: no overflow, no busy loop."""
    home = home_with(tmp_path / "home", webhook=hook.url, retry_max_seconds=300.0)
    hook.statuses = [503]
    put_in_outbox(home, EVENT, attempts=2000, due=0.0)
    before = time.time()
    assert deliver_due(home, lambda m: None, now=FAR) == 1
    [entry] = entries(home)
    assert entry["attempts"] == 2001
    assert 299 <= entry["due"] - before <= 301


def test_a_second_deliverer_leaves_the_outbox_to_the_first(tmp_path: Path, hook: Hook) -> None:
    """Two processes delivering at once would send an alert twice: the lock says no."""
    from pipeline.checkpoint import ProcessLock

    home = home_with(tmp_path / "home", webhook=hook.url)
    put_in_outbox(home, EVENT)
    with ProcessLock(home.state / "alerts" / "deliver.lock", "x").acquire(0):
        assert deliver_due(home, lambda m: None, now=FAR) == 1
    assert hook.requests == []
    assert deliver_due(home, lambda m: None, now=FAR) == 0
    assert len(hook.requests) == 1


def test_a_one_shot_delivery_stops_at_its_deadline(tmp_path: Path, hook: Hook) -> None:
    home = home_with(tmp_path / "home", webhook=hook.url)
    put_in_outbox(home, EVENT)
    assert deliver_due(home, lambda m: None, now=FAR, deadline=time.monotonic() - 1) == 1
    assert hook.requests == []
