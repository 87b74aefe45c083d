"""`tally serve` as a real process: the token on an address other machines reach, an address
in use, the event stream over a following `tally tail`, and a clean stop with a stream open."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import assert_one_line_error, event_line, make_home, run_tally, tally_executable

from pipeline.web.server import is_loopback

URL_LINE = re.compile(rb"tally serve: (http://\S+/)")


@contextmanager
def serving(home: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A `tally serve --port 0` process and the URL it printed once listening."""
    process = subprocess.Popen([tally_executable(), "serve", "--home", str(home), "--port", "0",
                                *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        printed = b""
        deadline = time.monotonic() + 60
        while not (found := URL_LINE.search(printed)):
            assert time.monotonic() < deadline and process.poll() is None, printed
            ready, _, _ = select.select([process.stderr], [], [], 1)
            if ready:
                printed += os.read(process.stderr.fileno(), 4096)
        yield process, found.group(1).decode().replace("0.0.0.0", "127.0.0.1")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_loopback_addresses() -> None:
    assert all(map(is_loopback, ("127.0.0.1", "127.1.2.3", "::1", "localhost")))
    assert not any(map(is_loopback, ("0.0.0.0", "::", "192.168.1.5", "example.com")))


def test_an_address_others_reach_is_refused_without_a_token(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    refused = run_tally("serve", "--home", str(home.root), "--host", "0.0.0.0")
    assert_one_line_error(refused, 2, "0.0.0.0", "token")


@pytest.mark.slow
def test_off_loopback_every_request_needs_the_token(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    with serving(home.root, "--host", "0.0.0.0", "--token", "s3cret") as (_, url):
        status, body = get(url + "api/report")
        assert status == 401 and b"token" in body
        assert get(url)[0] == 401
        assert get(url + "api/report", {"Authorization": "Bearer nope"})[0] == 401
        status, body = get(url + "api/report", {"Authorization": "Bearer s3cret"})
        assert status == 200 and json.loads(body) == []


@pytest.mark.slow
def test_the_token_may_come_from_config(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home", '[serve]\nhost = "0.0.0.0"\ntoken = "from-config"\n')
    with serving(home.root) as (_, url):
        assert get(url + "api/live")[0] == 401
        assert get(url + "api/live", {"Authorization": "Bearer from-config"})[0] == 200


def test_an_address_in_use_is_one_line(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = run_tally("serve", "--home", str(home.root), "--port", str(port))
    assert_one_line_error(refused, 2, f"127.0.0.1:{port}")


def events_from(stream: socket.socket, until: float) -> Iterator[tuple[str, dict[str, object]]]:
    """(event name, data) of the server-sent events read from a raw HTTP response."""
    buffered = b""
    while time.monotonic() < until:
        stream.settimeout(max(0.05, until - time.monotonic()))
        try:
            chunk = stream.recv(65536)
        except TimeoutError:
            return
        if not chunk:
            return
        buffered += chunk
        while b"\n\n" in buffered:
            block, buffered = buffered.split(b"\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.decode().splitlines()
                          if ": " in line and not line.startswith(":"))
            if "event" in fields:
                yield fields["event"], json.loads(fields.get("data", "{}"))


def open_stream(url: str) -> socket.socket:
    host, port = re.match(r"http://([^:/]+):(\d+)/", url).groups()  # type: ignore[union-attr]
    stream = socket.create_connection((host, int(port)), timeout=30)
    stream.sendall(f"GET /api/stream HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return stream


@pytest.mark.slow
def test_the_stream_tells_each_batch_of_a_following_tailer(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    log = home.logs / "agent.jsonl"
    log.write_bytes(event_line(agent="early", input_tokens=1))
    tailer = subprocess.Popen([tally_executable(), "tail", "--home", str(home.root)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with serving(home.root) as (_, url):
            stream = open_stream(url)
            assert next(events_from(stream, time.monotonic() + 10))[0] == "hello"
            with open(log, "ab") as handle:
                handle.write(event_line(agent="late", input_tokens=4000, output_tokens=1000,
                                        ts=datetime.now(UTC).isoformat()))
            batches = [data for name, data in events_from(stream, time.monotonic() + 20)
                       if name == "batch" and "late" in data.get("added", {})]
            assert batches, "no batch event for the appended line"
            assert batches[0]["added"]["late"]["tokens"] == 5000
            stream.close()
    finally:
        tailer.send_signal(signal.SIGTERM)
        tailer.wait(timeout=60)


@pytest.mark.slow
def test_a_one_shot_tail_is_told_as_a_change(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    with serving(home.root) as (_, url):
        stream = open_stream(url)
        assert next(events_from(stream, time.monotonic() + 10))[0] == "hello"
        (home.logs / "agent.jsonl").write_bytes(event_line(agent="once"))
        assert run_tally("tail", "--once", "--home", str(home.root)).returncode == 0
        changes = [data for name, data in events_from(stream, time.monotonic() + 10)
                   if name == "changed"]
        assert changes and "checkpoint" in changes[0]["what"]
        stream.close()


@pytest.mark.slow
def test_sigterm_stops_the_server_with_a_stream_open(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    with serving(home.root) as (process, url):
        stream = open_stream(url)
        assert next(events_from(stream, time.monotonic() + 10))[0] == "hello"
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - started < 10
        _, stderr = process.communicate()
        assert b"Traceback" not in stderr
        stream.close()
