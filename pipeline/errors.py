"""The one exception hierarchy of tally; every error carries the context needed to fix it."""

from __future__ import annotations

from pathlib import Path


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
        where = f"{path}" if field is None else f"{path}: {field}"
        super().__init__(f"{where}: {message}", hint=hint)
        self.path = path
        self.field = field


class HomeNotFound(TallyError):
    """The home directory a command reads does not exist."""

    exit_code = 3

    def __init__(self, path: Path) -> None:
        super().__init__(f"no tally home at {path}",
                         hint=f"run `tally init --home {path}`, or point --home or "
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
        where = "" if path is None else f"{path}:{line}: " if line is not None else f"{path}: "
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

    def __init__(self, message: str, *, path: Path, hint: str | None = None) -> None:
        super().__init__(f"{path}: {message}", hint=hint)
        self.path = path


class LockTimeout(TallyError):
    """Another tally process holds the lock this command needs."""

    exit_code = 75  # EX_TEMPFAIL: try again later

    def __init__(self, what: str, *, path: Path, waited: float, holder: str) -> None:
        super().__init__(
            f"another {what} is running ({holder}); gave up after waiting {waited:g} s",
            hint=f"wait for it to finish or stop it (lock file: {path})",
        )
        self.path = path


class LakeError(TallyError):
    """The lake is missing, damaged, or cannot take a commit."""

    exit_code = 5


class UnknownTimeZone(UsageError):
    """A --tz value that is not an IANA time zone name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown time zone {name!r}",
                         hint="use an IANA name such as UTC, Europe/Istanbul or Asia/Tokyo")
        self.name = name


class PricingError(TallyError):
    """The shipped pricing table cannot be read."""

    exit_code = 3
