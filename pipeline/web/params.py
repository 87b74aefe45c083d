"""Query strings of the API as the CLI's arguments: `/api/report?by=agent,day&since=...`
takes `tally report`'s options by their names, checked the same way; anything else is a
UsageError naming the parameter (a 400)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from pipeline.errors import UsageError
from pipeline.query import (
    COST_MODES,
    DAY_FORMAT,
    DEFAULT_BY,
    ReportQuery,
    check_day,
    check_query,
    parse_by,
    split_values,
)

REPEATABLE = ("agent", "role", "phase", "model", "status")
LIST_LIMIT = 10_000


@dataclass(frozen=True)
class Params:
    """A request's query parameters, each name with every value it was given."""

    values: Mapping[str, Sequence[str]]

    @classmethod
    def of(cls, items: Iterable[tuple[str, str]]) -> Params:
        """Parameters from (name, value) pairs, in order."""
        values: dict[str, list[str]] = {}
        for name, value in items:
            values.setdefault(name, []).append(value)
        return cls(values)

    def check_names(self, allowed: Sequence[str]) -> None:
        """UsageError for a name the endpoint does not take, or a single one given twice."""
        for name, given in self.values.items():
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                takes = ", ".join(allowed) or "no parameters"
                raise UsageError(f"unknown parameter {name!r}",
                                 hint=f"did you mean {close[0]!r}?" if close
                                 else f"this endpoint takes {takes}")
            if len(given) > 1 and name not in REPEATABLE:
                raise UsageError(f"parameter {name!r} is given {len(given)} times",
                                 hint="give it once (a list is comma-separated)")

    def text(self, name: str, default: str | None = None) -> str | None:
        """The parameter's value, `default` when it is absent."""
        given = self.values.get(name)
        return given[-1] if given else default

    def many(self, name: str) -> tuple[str, ...]:
        """Every value of a repeatable parameter, comma-separated lists split."""
        return split_values(tuple(self.values.get(name, ())))

    def day(self, name: str) -> date | None:
        """A YYYY-MM-DD parameter, read as the CLI reads its dates."""
        text = self.text(name)
        if text is None:
            return None
        try:
            day = datetime.strptime(text, DAY_FORMAT).date()
        except ValueError:
            raise UsageError(f"{name}={text!r} is not a date",
                             hint=f"give it as YYYY-MM-DD, e.g. {name}=2025-08-01") from None
        return check_day(name, day)

    def count(self, name: str, default: int, most: int = LIST_LIMIT) -> int:
        """A whole-number parameter from 1 to `most`."""
        text = self.text(name)
        if text is None:
            return default
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= most:
            raise UsageError(f"{name}={text!r} is not a whole number from 1 to {most}")
        return int(text)

    def choice(self, name: str, choices: Sequence[str], default: str) -> str:
        """A parameter that takes one of `choices`."""
        text = self.text(name, default)
        assert text is not None
        if text not in choices:
            raise UsageError(f"{name}={text!r} is not one of " + ", ".join(choices))
        return text


REPORT_PARAMS = ("by", "since", "until", "agent", "role", "phase", "model", "tz", "cost-mode",
                 "format")


def report_query(params: Params, extra: Sequence[str] = ()) -> ReportQuery:
    """The ReportQuery of `tally report` given the same options as parameters."""
    params.check_names([*REPORT_PARAMS, *extra])
    query = ReportQuery(by=parse_by(params.text("by", ",".join(DEFAULT_BY)) or ""),
                        since=params.day("since"), until=params.day("until"),
                        agents=params.many("agent"), roles=params.many("role"),
                        phases=params.many("phase"), models=params.many("model"),
                        tz=params.text("tz", "UTC") or "",
                        cost_mode=params.choice("cost-mode", COST_MODES, "auto"))
    return check_query(query)
