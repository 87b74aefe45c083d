"""The one exception hierarchy of tally; every error carries the context needed to fix it."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


def safe_text(text: str) -> str:
    """Text that prints anywhere: bytes of a non-UTF-8 file name (surrogate escapes) as \\xNN."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as it can be shown in a message, whatever bytes its name holds."""
    return safe_text(os.fspath(path))


class TallyError(Exception):
    """Base of every error tally raises on purpose; the CLI maps it to a message and exit code."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n  hint: {self.hint}"


class UsageError(TallyError):
    """The command was called with arguments that cannot work."""

    exit_code = 2


class ConfigError(TallyError):
    """config.toml is unreadable or holds a value of the wrong shape."""

    exit_code = 3

    def __init__(self, message: str, *, path: Path, field: str | None = None,
                 hint: str | None = None) -> None:
        where = display_path(path) if field is None else f"{display_path(path)}: {field}"
        super().__init__(f"{where}: {message}", hint=hint)
        self.path = path
        self.field = field


class HomeNotFound(TallyError):
    """The home directory a command reads does not exist."""

    exit_code = 3

    def __init__(self, path: Path) -> None:
        super().__init__(f"no tally home at {display_path(path)}",
                         hint=f"run `tally init --home {display_path(path)}`, or point --home or "
                              "TALLY_HOME at an existing home")
        self.path = path


class UnknownEventType(TallyError):
    """An event type (or version) that has no schema."""

    exit_code = 2

    def __init__(self, event_type: str, version: int, known: list[str]) -> None:
        super().__init__(
            f"unknown event type {event_type!r} (schema_version {version})",
            hint="known types: " + ", ".join(known),
        )
        self.event_type = event_type
        self.version = version


class InvalidEvent(TallyError):
    """An event failed validation; `field` is a JSON pointer into the event."""

    exit_code = 1

    def __init__(self, reason: str, message: str, *, field: str = "",
                 path: Path | None = None, line: int | None = None,
                 hint: str | None = None) -> None:
        shown = "" if path is None else display_path(path)
        where = "" if path is None else f"{shown}:{line}: " if line is not None else f"{shown}: "
        at = f" at {field}" if field else ""
        super().__init__(f"{where}{message}{at}", hint=hint)
        self.reason = reason
        self.detail = message
        self.field = field
        self.path = path
        self.line = line


class UnsafeName(TallyError):
    """A name taken from input would be unsafe as a file name."""

    exit_code = 2


class SourceError(TallyError):
    """An input file could not be read."""

    exit_code = 4

    def __init__(self, message: str, *, path: Path | str, hint: str | None = None) -> None:
        super().__init__(f"{display_path(path)}: {message}", hint=hint)
        self.path = Path(path)


class LockTimeout(TallyError):
    """Another tally process holds the lock this command needs."""

    exit_code = 75  # EX_TEMPFAIL: try again later

    def __init__(self, what: str, *, path: Path, waited: float, holder: str) -> None:
        super().__init__(
            f"another {what} is running ({holder}); gave up after waiting {waited:g} s",
            hint=f"wait for it to finish or stop it (lock file: {display_path(path)})",
        )
        self.path = path


class LakeError(TallyError):
    """The lake, the stage or the checkpoint is damaged, or the lake cannot take a commit."""

    exit_code = 5


class DamagedFile(LakeError):
    """A file tally wrote (checkpoint, stage batch) cannot be read back."""

    def __init__(self, what: str, path: Path | str, detail: str, *, hint: str) -> None:
        super().__init__(f"{what} {display_path(path)} is damaged: {detail}", hint=hint)
        self.path = path


class WouldLoseData(TallyError):
    """A command refused because it would leave fewer events than there are now."""

    exit_code = 6


class StorageError(TallyError):
    """tally cannot write where it must: disk full, read-only, no permission."""

    exit_code = 74  # EX_IOERR

    def __init__(self, message: str, *, path: Path | str | None, hint: str | None = None,
                 errno_code: int | None = None) -> None:
        where = "" if path is None else f"{display_path(path)}: "
        super().__init__(f"{where}{message}", hint=hint)
        self.path = path
        self.errno = errno_code


_STORAGE_HINTS = {
    errno.ENOSPC: "free space on that file system (or move the home with --home); nothing "
                  "was lost: the checkpoint did not move, so the same lines are read again",
    errno.EDQUOT: "raise the quota or free space; nothing was lost: the same lines are read "
                  "again",
    errno.EROFS: "the file system is mounted read-only; remount it read-write or move the home",
    errno.EACCES: "make it writable (and its directory) by the user running tally",
    errno.EPERM: "make it writable (and its directory) by the user running tally",
}


def storage_error(exc: OSError, doing: str, path: Path | str | None = None) -> StorageError:
    """A one-line StorageError for an OSError met while `doing` something to `path`."""
    target = path if path is not None else exc.filename
    reason = exc.strerror or str(exc)
    return StorageError(f"cannot {doing}: {reason}", path=target,
                        hint=_STORAGE_HINTS.get(exc.errno or 0), errno_code=exc.errno)


def is_storage_failure(exc: BaseException) -> bool:
    """Whether an exception is the file system refusing a write (full, read-only, denied)."""
    return isinstance(exc, OSError) and exc.errno in _STORAGE_HINTS


class UnknownTimeZone(UsageError):
    """A --tz value that is not an IANA time zone name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown time zone {name!r}",
                         hint="use an IANA name such as UTC, Europe/Istanbul or Asia/Tokyo")
        self.name = name


class InternalError(TallyError):
    """Something tally did not expect: a bug, reported in one line instead of a traceback."""

    exit_code = 70  # EX_SOFTWARE

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"internal error: {type(exc).__name__}: {safe_text(str(exc))}",
                         hint="run again with TALLY_DEBUG=1 to see the traceback, and report it")


class PricingError(TallyError):
    """The shipped pricing table, or the prices imported into the home, cannot be read."""

    exit_code = 3


class PriceListError(TallyError):
    """A price list given to `tally pricing import` cannot be read or holds a bad entry;
    `field` is the model's key in it, `line` the line of a JSON syntax error."""

    exit_code = 4  # an input file, as SourceError

    def __init__(self, message: str, *, path: Path | str, field: str | None = None,
                 line: int | None = None, hint: str | None = None) -> None:
        where = display_path(path) if line is None else f"{display_path(path)}:{line}"
        if field is not None:
            where = f"{where}: {safe_text(field)!r}"
        super().__init__(f"{where}: {message}", hint=hint)
        self.path = Path(path)
        self.field = field
        self.line = line


class ChartError(TallyError):
    """A chart could not be drawn (vl-convert refused the spec)."""

    exit_code = 1


class ServeError(TallyError):
    """`tally serve` cannot start: an address it may not bind without a token, or one in use."""

    exit_code = 2


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[list[str]]:
    """Hold back what native code writes to stderr (a Rust panic's report) while the block
    runs. If the block fails, the text is handed over in the list (for the error's
    message) instead of reaching the user; if it succeeds, it is written out as it was."""
    captured: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no stderr to redirect
        yield captured
        return
    with tempfile.TemporaryFile() as holder:
        os.dup2(holder.fileno(), 2)
        failed = False
        try:
            yield captured
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            holder.seek(0)
            text = holder.read().decode("utf-8", "replace")
            if failed:
                captured.append(text)
            elif text:
                sys.stderr.write(text)
