"""The `tally` executable. `tally statusline [--home DIR]` is answered here, before click
and the config are imported: Claude Code runs it after every assistant message, and
those imports alone take most of its 60 ms. Everything else, `tally statusline --help`
included, goes to the click command line (pipeline.cli).
"""

from __future__ import annotations

import os
import sys

HOME_ENV = "TALLY_HOME"  # as pipeline.config reads it
DEFAULT_HOME = ".tally"


def main() -> None:
    """Run `tally` with the process's arguments."""
    home = statusline_home(sys.argv[1:])
    if home is not None:
        from pipeline.statusline import line_for

        sys.stdout.write(line_for(home, read_stdin()) + "\n")
        return
    from pipeline.cli import main as cli_main

    cli_main()


def read_stdin() -> bytes:
    """What was piped in; nothing when stdin is a terminal (run by hand)."""
    return b"" if sys.stdin.isatty() else sys.stdin.buffer.read()


def statusline_home(args: list[str]) -> str | None:
    """The home of a plain `statusline [--home DIR]` call, None for any other call."""
    if args[:1] != ["statusline"]:
        return None
    rest = args[1:]
    if not rest:
        return os.environ.get(HOME_ENV) or DEFAULT_HOME
    if len(rest) == 2 and rest[0] == "--home":
        return rest[1]
    if len(rest) == 1 and rest[0].startswith("--home="):
        return rest[0].removeprefix("--home=")
    return None
