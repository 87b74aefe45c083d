"""Delivering alerts from the outbox at least once: to `[alerts] command` (the alert JSON
on stdin) and to `[alerts] webhook` (POSTed JSON with a Slack-compatible `text`), each
with the alert's event_id as its idempotency key.

A failing receiver is retried with a doubling wait up to `retry_max_seconds`, on a
thread of its own: ingestion never waits for it. An alert leaves the outbox once every
receiver took it; what is left is tried again after a restart.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from pipeline.alerts import alert_text, pending_alerts, put_in_outbox
from pipeline.checkpoint import ProcessLock
from pipeline.config import Home
from pipeline.errors import LockTimeout, TallyError, safe_text
from pipeline.settings import AlertSettings

FIRST_RETRY_SECONDS = 1.0
IDLE_WAKE_SECONDS = 5.0  # how often an idle deliverer looks at the outbox unasked

Notify = Callable[[str], None]


def alert_payload(event: dict[str, Any]) -> bytes:
    """What receivers get: the alert event and a `text` line for chat webhooks."""
    return orjson.dumps({**event, "text": alert_text(event)})


def send_command(settings: AlertSettings, event: dict[str, Any]) -> str | None:
    """Run the alert command with the payload on stdin; None on success, else why not."""
    env = {**os.environ, "TALLY_ALERT_ID": str(event["event_id"])}
    try:
        # A session of its own: on a timeout, whatever the shell started is killed too.
        process = subprocess.Popen(settings.command, shell=True, stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                                   start_new_session=True)
    except OSError as exc:
        return f"the command could not run: {exc.strerror or exc}"
    try:
        _, stderr = process.communicate(alert_payload(event), timeout=settings.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return f"the command did not finish within {settings.timeout:g} s"
    if process.returncode != 0:
        said = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        return f"the command exited {process.returncode}" + (f": {said[0]}" if said[0] else "")
    return None


def send_webhook(settings: AlertSettings, event: dict[str, Any]) -> str | None:
    """POST the payload to the webhook; None on a 2xx answer, else why not."""
    request = urllib.request.Request(
        settings.webhook, data=alert_payload(event), method="POST",
        headers={"Content-Type": "application/json", "Idempotency-Key": str(event["event_id"]),
                 "User-Agent": "tally"})
    try:
        with urllib.request.urlopen(request, timeout=settings.timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"the webhook answered {exc.code}"
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"the webhook could not be reached: {reason}"
    return None if 200 <= status < 300 else f"the webhook answered {status}"


def receivers(settings: AlertSettings) -> dict[str, Callable[[AlertSettings, dict[str, Any]],
                                                             str | None]]:
    """The configured receivers by name."""
    found: dict[str, Callable[[AlertSettings, dict[str, Any]], str | None]] = {}
    if settings.command:
        found["command"] = send_command
    if settings.webhook:
        found["webhook"] = send_webhook
    return found


def deliver_due(home: Home, notify: Notify, now: float | None = None,
                deadline: float | None = None) -> int:
    """Try every outbox alert that is due (until the monotonic `deadline`, if given);
    return how many are still waiting. Another process delivering leaves them to it."""
    lock = ProcessLock(home.state / "alerts" / "deliver.lock", "delivering alerts")
    try:
        lock.acquire(0)
    except LockTimeout:
        return len(pending_alerts(home))
    try:
        now = time.time() if now is None else now
        waiting = 0
        for path, entry in pending_alerts(home):
            late = deadline is not None and time.monotonic() > deadline
            if late or entry.get("due", 0) > now or not _deliver(home, path, entry, notify):
                waiting += 1
        return waiting
    finally:
        lock.release()


def _deliver(home: Home, path: Path, entry: dict[str, Any], notify: Notify) -> bool:
    """Try one alert on the receivers it still needs; True once none is left."""
    settings = home.alerts
    event = entry["event"]
    left = [name for name in entry.get("left", list(receivers(settings)))
            if name in receivers(settings)]
    failures = {}
    for name in left:
        try:
            why = receivers(settings)[name](settings, event)
        except Exception as exc:  # a receiver's surprise is a failed attempt, retried
            why = f"{type(exc).__name__}: {exc}"
        if why is not None:
            failures[name] = why
    if not failures:
        path.unlink(missing_ok=True)
        return True
    attempts = int(entry.get("attempts", 0)) + 1
    wait = min(settings.retry_max_seconds, FIRST_RETRY_SECONDS * 2 ** min(attempts - 1, 30))
    for name, why in failures.items():
        notify(f"alert {event['event_id']}: {name} failed (attempt {attempts}): "
               f"{safe_text(why)}; retrying in {wait:g} s")
    try:
        put_in_outbox(home, event, attempts, time.time() + wait, list(failures))
    except TallyError as error:
        notify(f"alert {event['event_id']}: {error.message}")
    return False


class Deliverer:
    """A thread that delivers the outbox: woken by a new alert, and every few seconds."""

    def __init__(self, home: Home, notify: Notify) -> None:
        self.home = home
        self.notify = notify
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tally-alerts", daemon=True)

    def start(self) -> Deliverer:
        """Start delivering (nothing to do without receivers)."""
        if receivers(self.home.alerts):
            self._thread.start()
        return self

    def wake(self) -> None:
        """Deliver now: a new alert is in the outbox."""
        self._wake.set()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop after the attempt under way (what is left stays in the outbox)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                deliver_due(self.home, self.notify)
            except Exception as exc:  # a bug here must not stop ingestion; say it, go on
                self.notify(f"alert delivery failed: {safe_text(str(exc))}")
            self._wake.wait(timeout=self._next_wait())

    def _next_wait(self) -> float:
        dues = [float(entry.get("due", 0)) for _, entry in pending_alerts(self.home)]
        if not dues:
            return IDLE_WAKE_SECONDS
        return max(0.05, min(IDLE_WAKE_SECONDS, min(dues) - time.time()))
