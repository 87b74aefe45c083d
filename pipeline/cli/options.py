"""Decorators and helpers shared by every command: home, output format, error mapping."""

from __future__ import annotations

import functools
import importlib
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

import click

from pipeline.config import Home, load_home
from pipeline.errors import (
    HomeNotFound,
    InternalError,
    LakeError,
    SourceError,
    TallyError,
    is_storage_failure,
    safe_text,
    storage_error,
)
from pipeline.records import json_text
from pipeline.settings import setting_bounds
from pipeline.storage import REMOTE_HINT, is_unreachable

F = TypeVar("F", bound=Callable[..., Any])


def _home_decorator(must_exist: bool) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        @click.option("--home", "home_dir", type=click.Path(file_okay=False), default=None,
                      help="tally home directory [env: TALLY_HOME; default: ./.tally]")
        @functools.wraps(func)
        def wrapper(*args: Any, home_dir: str | None, **kwargs: Any) -> Any:
            home = load_home(home_dir)
            if must_exist:
                require_home(home)
            return func(*args, home=home, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


@contextmanager
def progress_bar(label: str, show: bool = True) -> Iterator[Callable[[int, int], None] | None]:
    """A click progress bar on a terminal (`update(done, total)`), nothing otherwise."""
    if not (show and sys.stderr.isatty()):
        yield None
        return
    with click.progressbar(length=1, label=label, file=sys.stderr) as bar:
        def update(done: int, total: int) -> None:
            bar.length = max(total, done, 1)
            bar.update(done - bar.pos)

        yield update


def require_home(home: Home) -> None:
    """HomeNotFound unless the home directory exists."""
    if not home.root.is_dir():
        raise HomeNotFound(home.root)


home_option = _home_decorator(must_exist=True)
"""--home DIR (or TALLY_HOME) of an existing home, passed to the command as a `Home`."""

new_home_option = _home_decorator(must_exist=False)
"""--home DIR (or TALLY_HOME) that the command may create, or checks itself."""


class FiniteFloatRange(click.FloatRange):
    """A FloatRange that also refuses nan and inf, which no range check catches."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


def setting_type(settings: type[Any], name: str) -> click.ParamType[Any, Any]:
    """The click type of an option overriding a config.toml setting: its kind and range."""
    bounds = setting_bounds(settings, name)
    low = bounds.least if bounds.above is None else bounds.above
    if isinstance(getattr(settings(), name), int):
        return click.IntRange(None if low is None else int(low),
                              None if bounds.most is None else int(bounds.most),
                              min_open=bounds.above is not None)
    return FiniteFloatRange(low, bounds.most, min_open=bounds.above is not None)


def format_option(*choices: str, default: str = "table") -> Callable[[F], F]:
    """--format with the given choices."""
    return click.option("--format", "fmt", type=click.Choice(choices), default=default,
                        show_default=True, help="output format")


def echo_json(value: Any) -> None:
    """Print a value as indented JSON (see `records.json_text`)."""
    click.echo(json_text(value))


def say(message: str) -> None:
    """Print a notice on stderr: alerts and failures, which even --quiet lets through."""
    click.echo(message, err=True)


def stop_on_signals(stop: threading.Event) -> None:
    """SIGINT and SIGTERM set `stop`: a long-running command finishes what it is doing."""
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def fail(error: TallyError) -> None:
    """Report a TallyError on stderr and exit with its code; TALLY_DEBUG=1 re-raises."""
    if os.environ.get("TALLY_DEBUG") == "1":
        raise error
    click.secho(f"error: {safe_text(error.message)}", fg="red", err=True)
    if error.hint:
        click.echo(f"  hint: {safe_text(error.hint)}", err=True)
    sys.exit(error.exit_code)


def as_tally_error(exc: Exception) -> TallyError:
    """The TallyError to report for an exception no library call turned into one."""
    if isinstance(exc, TallyError):
        return exc
    if is_storage_failure(exc):
        assert isinstance(exc, OSError)
        return storage_error(exc, "write")
    if isinstance(exc, OSError) and exc.filename is not None:
        return SourceError(exc.strerror or str(exc), path=exc.filename)
    if is_unreachable(str(exc)):  # an object store that stopped answering mid-read
        detail = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        return LakeError(f"cannot reach the lake: {safe_text(detail)}", hint=REMOTE_HINT)
    return InternalError(exc)


class TallyGroup(click.Group):
    """A click group that maps TallyError to a message and exit code, and loads commands lazily.

    `lazy_commands` maps a command name to "module:attribute"; the module is imported only
    when that command runs, so `tally log` in an agent's shell loop does not load Polars.
    """

    def __init__(self, *args: Any, lazy_commands: dict[str, str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self.lazy_commands.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:  # `tally report | head`: the reader has what it wanted
            _quiet_exit()
        except Exception as error:  # a traceback reaching a user is a bug
            if os.environ.get("TALLY_DEBUG") == "1":
                raise
            fail(as_tally_error(error))


def _quiet_exit() -> None:
    """Exit 0 without Python's complaint about flushing a closed pipe at shutdown."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(0)


def home_of(home: Home) -> str:
    """How to show the home in messages."""
    return str(home.root)
