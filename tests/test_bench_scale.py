"""bench.scale on a tiny fleet: 3,000 events over three hosts compacting at once into moto's S3,
one run; the figures it prints, the lake check it makes, and the engines agreeing (nothing is
timed against a goal). Daft runs too where .venv-scale is built, else it says why not."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from deltalake import write_deltalake

from bench import scale

slow = pytest.mark.slow  # the tiny run: three compactions at once, Daft's Ray cluster: ~40 s

EVENTS = 3000
HOSTS = ("host-a", "host-b", "host-c")


@pytest.fixture(scope="module")
def printed(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("bench-scale")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert scale.main(["--events", str(EVENTS), "--repeat", "1",
                           "--workdir", str(root)]) == 0
    assert list(root.iterdir()) == []  # the logs and homes are removed
    return out.getvalue().splitlines()


@pytest.fixture(scope="module")
def figures(printed: list[str]) -> dict[str, Any]:
    return json.loads(printed[-1])


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and value > 0


@slow
def test_the_lake_holds_every_event_once_whoever_compacted_it(
        printed: list[str], figures: dict[str, Any]) -> None:
    (run,) = figures["runs"]
    assert figures["lake_check"] == "passed"
    assert "lake check (rows = distinct event ids = events), every run, both lakes: passed" \
        in printed
    assert run["hosts"]["lake"]["rows"] == run["hosts"]["lake"]["distinct_event_ids"] == EVENTS
    assert run["single"]["lake"] == {"rows": EVENTS, "distinct_event_ids": EVENTS}
    assert sorted(run["hosts"]["hosts"]) == list(HOSTS)
    assert sum(h["events"] for h in run["hosts"]["hosts"].values()) == EVENTS
    assert figures["preparation"]["shares"] == dict.fromkeys(HOSTS, EVENTS // 3)


@slow
def test_throughput_and_retries_of_one_host_and_of_three(figures: dict[str, Any]) -> None:
    (run,) = figures["runs"]
    assert run["single"]["events"] == EVENTS and run["single"]["retries"] == 0
    for part in (run["single"], run["hosts"]):
        assert positive(part["seconds"]) and positive(part["events_per_s"])
        assert part["s3_cpu_s"] >= 0
    assert run["hosts"]["events_per_s"] == round(EVENTS / run["hosts"]["seconds"])
    for name in HOSTS:
        host = run["hosts"]["hosts"][name]
        assert host["summary"].startswith(f"compact: {host['events']:,} events in ")
        assert isinstance(host["retries"], int) and host["retries"] >= 0
        assert ("planned again" in host["summary"]) == (host["retries"] > 0)
        assert host["seconds"] <= run["hosts"]["seconds"]
    assert run["hosts"]["retries_total"] == sum(run["hosts"]["retries"].values())
    medians = figures["medians"]
    assert medians["3 hosts: events/s"] == run["hosts"]["events_per_s"]
    assert medians["1 host: events/s"] == run["single"]["events_per_s"]


@slow
def test_each_host_polars_and_daft_answer_the_same(printed: list[str],
                                                   figures: dict[str, Any]) -> None:
    (run,) = figures["runs"]
    assert figures["agreement"] == "yes"
    assert "engines agree per agent and day (events, four token sums): yes" in printed
    assert all(positive(run["report_s"][name]) for name in HOSTS)
    assert positive(run["polars_s"]) and run["groups"] > 0
    assert set(run["agreement"]) >= {"host-a vs host-b", "host-a vs host-c", "host-a vs polars"}
    daft = run["daft"]
    if "skipped" in daft:
        assert daft["skipped"]
        assert figures["medians"]["Daft process (examples/daft_report.py)"] is None
    else:
        assert daft["nodes_alive"] == 2
        assert positive(daft["seconds"]) and positive(daft["query_s"])
        assert any(key.startswith("host-a vs daft") for key in run["agreement"])


@slow
def test_the_table_has_a_median_and_every_run_per_figure(printed: list[str]) -> None:
    table = printed[printed.index(next(p for p in printed if p.startswith("measure"))):]
    for label in ("1 host: events/s", "3 hosts: events/s", "host-b: retries (planned again)",
                  "tally report from host-c", "Polars in-process query"):
        assert any(line.startswith(label) or line.startswith(f"  {label}") for line in table), \
            label
    assert printed[-2].startswith("reproduce: .venv/bin/python -m bench.scale --events 3000")


def test_a_lake_missing_or_repeating_events_fails_the_check(tmp_path: Path) -> None:
    table = tmp_path / scale.TABLE
    write_deltalake(str(table), pl.DataFrame({"event_id": ["a", "b", "b"]}).to_arrow())
    with pytest.raises(scale.LakeCheckFailed, match=r"LAKE CHECK FAILED: .* holds 3 rows and "
                                                    r"2 distinct event ids; expected 3 of each"):
        scale.check_lake(str(tmp_path), {}, 3)
    with pytest.raises(scale.LakeCheckFailed, match="expected 4 of each"):
        scale.check_lake(str(tmp_path), {}, 4)


def test_the_summary_line_gives_events_and_retries() -> None:
    once = scale.parse_summary("compact: 1,000 events in 1 commit(s), 27 partition(s) touched, "
                               "5.76 s (174 events/s)\n", "host-a")
    again = scale.parse_summary(
        "compact: 1,000 events in 2 commit(s), 28 partition(s) touched, 6.31 s "
        "(159 events/s), planned again 2 time(s) after other hosts' commits\n", "host-b")
    assert (once["events"], once["commits"], once["retries"]) == (1000, 1, 0)
    assert (again["events"], again["commits"], again["retries"], again["own_s"]) == (
        1000, 2, 2, 6.31)
    both = scale.parse_summary(
        "compact: 10 events in 1 commit(s), 1 partition(s) touched, 1.00 s (10 events/s), "
        "planned again 1 time(s) after other hosts' commits, rollups caught up again 3 "
        "time(s)\n", "host-b")
    assert (both["retries"], both["rollup_retries"], once["rollup_retries"]) == (1, 3, 0)
    with pytest.raises(RuntimeError, match="host-c: no summary line"):
        scale.parse_summary("", "host-c")
