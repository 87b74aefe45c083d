"""Where the lake lives: a directory of this host, or a prefix of an S3-compatible object
store that many hosts share, with the options that reach it.

A `Location` names a table (or the lake's root) as delta-rs and Polars take it: a URI and
storage options. The stage, the checkpoints and the quarantine stay on local disk whatever
the lake is; only the Delta tables move.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from pipeline.errors import display_path

# The environment variables delta-rs, Polars and tally read for S3 (keys they all accept:
# Polars refuses storage options it does not know).
ENV_OPTIONS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
               "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ALLOW_HTTP")
_S3_URI = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?")


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
        return "://" not in self.uri or self.uri.startswith("file://")

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
    """What is wrong with a `[lake] uri`, or None: a directory, or `s3://bucket/prefix`."""
    if not is_remote_uri(uri):
        return None if uri and "\0" not in uri else "must name a directory or s3://bucket/prefix"
    if not _S3_URI.fullmatch(uri):
        return ("must be s3://bucket/prefix (a lowercase bucket name of 3-63 characters; "
                "other object stores are not supported)")
    return None


# What delta-rs and Polars say when an object store does not answer, or refuses the keys.
UNREACHABLE_MARKERS = ("S3 error", "error sending request", "Connection refused",
                       "timed out", "dns error", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                       "NoSuchBucket", "403 Forbidden")


def is_unreachable(text: str) -> bool:
    """Whether a failure's text says the object store could not be reached or refused us."""
    return any(marker in text for marker in UNREACHABLE_MARKERS)


def env_options(environ: dict[str, str] | os._Environ[str] = os.environ) -> dict[str, str]:
    """The S3 settings the environment gives (AWS_* variables)."""
    return {key: environ[key] for key in ENV_OPTIONS if environ.get(key)}


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
