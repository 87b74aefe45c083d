"""Where the lake lives: a directory of this host, or a prefix of an S3-compatible object
store that many hosts share, with the options that reach it.

A `Location` names a table (or the lake's root) as delta-rs and Polars take it: a URI and
storage options. The stage, the checkpoints and the quarantine stay on local disk whatever
the lake is; only the Delta tables move. The `[lake]` and `[host]` sections of config.toml
are checked here (pipeline.config reads the file).
"""

from __future__ import annotations

import os
import random
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pipeline.errors import ConfigError, display_path

# The environment variables delta-rs, Polars and tally read for S3 (keys they all accept:
# Polars refuses storage options it does not know).
ENV_OPTIONS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
               "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ALLOW_HTTP")
_HOST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_S3_URI = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s/]+)*/?")  # no empty part


@dataclass(frozen=True)
class Location:
    """A table or directory of the lake: `uri` (a plain path on this host, or `s3://...`)
    and the storage options that reach it."""

    uri: str
    options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def local(cls, path: Path) -> Location:
        """A directory of this host."""
        return cls(str(path))

    @property
    def is_local(self) -> bool:
        """Whether it is a directory of this host (not an object store)."""
        return not is_remote_uri(self.uri)

    @property
    def path(self) -> Path:
        """The local directory (only for a local location)."""
        if not self.is_local:
            raise ValueError(f"{self.uri} is not on this host")
        parsed = urlparse(self.uri)
        return Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(self.uri)

    @property
    def name(self) -> str:
        """The last part of its path: a table's name."""
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    @property
    def storage_options(self) -> dict[str, str] | None:
        """What delta-rs and Polars are given to reach it (None on this host)."""
        return dict(self.options) or None

    def __truediv__(self, part: str) -> Location:
        if self.is_local:
            return Location(str(self.path / part), self.options)
        return Location(f"{self.uri.rstrip('/')}/{part}", self.options)

    def __str__(self) -> str:
        return display_path(self.path) if self.is_local else self.uri

    def file(self, name: str) -> str:
        """A data file of the table, named as its log names it (relative, URL-encoded),
        as a path or URI Polars reads."""
        if self.is_local:
            return str(self.path / unquote(name))
        return f"{self.uri.rstrip('/')}/{unquote(name)}"


def is_remote_uri(uri: str) -> bool:
    """Whether a lake URI names an object store rather than a directory."""
    return "://" in uri and not uri.startswith("file://")


def check_lake_uri(uri: str) -> str | None:
    """What is wrong with a `[lake] uri`, or None: it must be `s3://bucket/prefix` (a lake
    on this host is always the home's `lake/`)."""
    if not _S3_URI.fullmatch(uri):
        return ("must be s3://bucket/prefix (a lowercase bucket name of 3-63 characters; "
                "other object stores are not supported)")
    return None


REMOTE_HINT = ("check [lake] uri and endpoint, the AWS_* credentials and the network; "
               "nothing is lost: the events wait in the stage")
# What delta-rs and Polars say when an object store does not answer, or refuses the keys.
UNREACHABLE_MARKERS = ("S3 error", "error sending request", "Connection refused",
                       "timed out", "dns error", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                       "NoSuchBucket", "403 Forbidden")


def is_unreachable(text: str) -> bool:
    """Whether a failure's text says the object store could not be reached or refused us."""
    return any(marker in text for marker in UNREACHABLE_MARKERS)


def wait_before_retry(attempt: int, longest: float = 2.0, first: float = 0.05) -> None:
    """Sleep a random while, growing with the attempt: hosts that collided spread apart."""
    time.sleep(random.uniform(0, min(longest, first * 2 ** attempt)))


def env_options(environ: dict[str, str] | os._Environ[str] = os.environ) -> dict[str, str]:
    """The S3 settings the environment gives (AWS_* variables)."""
    return {key: environ[key] for key in ENV_OPTIONS if environ.get(key)}


# ---------------------------------------------------------------- [lake] and [host]


def lake_uri(lake: dict[str, Any], path: Path) -> str:
    """`[lake] uri`, checked: s3://bucket/prefix ("" for the home's lake/)."""
    uri = lake.get("uri", "")
    problem = check_lake_uri(uri) if isinstance(uri, str) else "must be text"
    if uri != "" and problem:
        raise ConfigError(f"{problem}, got {uri!r}", path=path, field="lake.uri",
                          hint='for example uri = "s3://team-bucket/tally"')
    return str(uri)


def lake_options(lake: dict[str, Any], path: Path) -> tuple[tuple[str, str], ...]:
    """The storage options of a lake in an object store: the environment's AWS_* settings,
    overridden by [lake] endpoint, region and allow_http."""
    options = env_options()
    for key, option in (("endpoint", "AWS_ENDPOINT_URL"), ("region", "AWS_REGION")):
        value = lake.get(key, "")
        if not isinstance(value, str) or any(c.isspace() for c in value):
            raise ConfigError(f"must be text without spaces, got {value!r}", path=path,
                              field=f"lake.{key}")
        if value:
            options[option] = value
    if "endpoint" in lake and not re.match(r"https?://[^/\s]+", lake["endpoint"]):
        raise ConfigError(f"must be an http:// or https:// URL, got {lake['endpoint']!r}",
                          path=path, field="lake.endpoint",
                          hint='for example endpoint = "http://127.0.0.1:9000"')
    allow_http = lake.get("allow_http", False)
    if not isinstance(allow_http, bool):
        raise ConfigError(f"must be true or false, got {allow_http!r}", path=path,
                          field="lake.allow_http")
    if allow_http:
        options["AWS_ALLOW_HTTP"] = "true"
    return tuple(sorted(options.items()))


def host_id(host: dict[str, Any], path: Path) -> str:
    """`[host] id`, checked: letters, digits, `.`, `_` and `-` (default: the hostname)."""
    name = host.get("id")
    if name is None:
        return default_host_id()
    if not isinstance(name, str) or not _HOST_ID.fullmatch(name):
        raise ConfigError(f"must be 1-64 letters, digits, '.', '_' or '-', got {name!r}",
                          path=path, field="host.id", hint='for example id = "build-01"')
    return name


def default_host_id() -> str:
    """This machine's name, as a host id: characters a host id may not hold become `-`."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).strip("-._")[:64]
    return name or "localhost"


def read_object(place: Location) -> bytes | None:
    """A small file of the lake (a table's `_last_checkpoint`), None when it is not there."""
    if place.is_local:
        try:
            return place.path.read_bytes()
        except FileNotFoundError:
            return None
    from pyarrow import fs

    options = place.storage_options or {}
    endpoint = urlparse(options.get("AWS_ENDPOINT_URL", ""))
    store = fs.S3FileSystem(
        access_key=options.get("AWS_ACCESS_KEY_ID"),
        secret_key=options.get("AWS_SECRET_ACCESS_KEY"),
        session_token=options.get("AWS_SESSION_TOKEN"), region=options.get("AWS_REGION"),
        scheme=endpoint.scheme or None, endpoint_override=endpoint.netloc or None)
    try:
        with store.open_input_stream(place.uri.removeprefix("s3://")) as stream:
            body: bytes = stream.read()
            return body
    except FileNotFoundError:
        return None
