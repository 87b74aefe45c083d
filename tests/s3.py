"""An S3 emulator for the tests: moto's server in a child process on 127.0.0.1.

Not ThreadedMotoServer in the test process: DeltaTable.history(), is_deltatable() and repair()
hold the GIL while they wait for S3, so an emulator thread in the same process never answers
them and they hang until their timeouts (minutes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import boto3

KEY_ID = "k"
SECRET = "s"
REGION = "us-east-1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound to 0, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class MotoServer:
    """moto's S3 server as a child process; `start()` waits until it answers, `stop()` ends it.

    `endpoint` is its URL, `options` the storage options deltalake and Polars take, `env()`
    the same settings as environment variables for subprocesses, `bucket()` a new bucket."""

    def __init__(self, start_timeout: float = 30.0) -> None:
        self.start_timeout = start_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log: Any = None  # the server's stderr, a file: a pipe could fill and block it

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def options(self) -> dict[str, str]:
        """Storage options for deltalake (write_deltalake, DeltaTable) and pl.scan_delta."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": KEY_ID,
                "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": REGION,
                "AWS_ALLOW_HTTP": "true"}

    def env(self) -> dict[str, str]:
        """The standard AWS environment variables that point a subprocess at this server."""
        return dict(self.options)

    def client(self) -> Any:
        """A boto3 S3 client for this server."""
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY_ID,
                            aws_secret_access_key=SECRET, region_name=REGION)

    def bucket(self, name: str | None = None) -> str:
        """Create bucket `name` (a fresh unique name by default); its URI, s3://name."""
        name = name or f"b-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def start(self) -> MotoServer:
        # A port found free may be taken before moto binds it: then moto exits, try another.
        failures = []
        for _ in range(3):
            self.port = free_port()
            self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by _end)
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
            if self._answers():
                return self
            failures.append(self._end())
        raise RuntimeError(f"moto's server did not start on 127.0.0.1: {failures[-1]}")

    def _answers(self) -> bool:
        """Whether the server answers within the start timeout (False once it has exited)."""
        assert self.process is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            self.client().list_buckets()  # it is moto listening there, not some other server
            return True
        return False

    def _end(self) -> str:
        """Terminate the server (kill it if it lingers); the end of what it printed."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        printed = b""
        if self.log is not None:
            self.log.seek(0)
            printed = self.log.read()
            self.log.close()
            self.log = None
        return printed.decode(errors="replace").strip()[-2000:]

    def stop(self) -> None:
        self._end()

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()



def shared_lake_home(root: Any, name: str, lake: str, extra: str = "") -> Any:
    """A tally home (directory `root/name`) whose lake is `lake` (s3://...), committing as
    host `name`; `extra` is more config.toml text. Its path."""
    from pipeline.config import init_home

    home = root / name
    init_home(home)
    (home / "config.toml").write_text(
        f'[lake]\nuri = "{lake}"\n\n[host]\nid = "{name}"\n\n{extra}')
    return home
