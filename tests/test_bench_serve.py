"""bench.serve on a tiny lake: one short run of every measurement, its figures' shape (nothing
is timed against a goal)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from bench import serve

pytestmark = pytest.mark.slow  # builds a lake, starts tally serve and chromium: ~20-30 s

TINY = ["--events", "20000", "--slices", "2", "--requests", "5", "--paints", "1",
        "--window", "1", "--settle", "0.5", "--repeat", "1"]


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and value > 0


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not Path(serve.CHROMIUM).is_file():
        pytest.skip(f"no {serve.CHROMIUM} (Debian's chromium): the bench drives it")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    root = tmp_path_factory.mktemp("bench-serve")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert serve.main([*TINY, "--lake-dir", str(root / "lake"), "--scratch", str(root)]) == 0
    printed = out.getvalue().splitlines()
    assert any(line.startswith("overview first paint (tile)") for line in printed)
    assert list(root.iterdir()) == [root / "lake"]  # the served copy is removed
    return json.loads(printed[-1])


def test_the_page_is_timed_from_navigation_to_the_tile_and_to_everything_drawn(
        figures: dict[str, Any]) -> None:
    (run,) = figures["runs"]
    paint = run["paint"]
    for key in ("tile_ms", "fcp_ms", "ready_ms", "first_tile_ms", "overview_at_ms",
                "overview_ms", "live_ms", "chart_ms"):
        assert positive(paint[key]), key
    assert paint["fcp_ms"] <= paint["ready_ms"] and paint["tile_ms"] <= paint["ready_ms"]
    assert paint["overview_at_ms"] + paint["overview_ms"] <= paint["tile_ms"] + 0.5  # rounding
    assert paint["tiles_ms"] == [paint["first_tile_ms"]]
    assert all(positive(paint["tile_events"][k]) for k in ("today", "week", "month"))
    assert paint["chart_drawn"] and paint["gauges"] > 0  # the shipped budgets are on
    assert figures["date"] == "2026-12-31"
    assert figures["medians"]["paint.tile_ms"] == paint["tile_ms"]


def test_report_latency_and_the_cli_baseline_answer_the_same_rows(
        figures: dict[str, Any]) -> None:
    (run,) = figures["runs"]
    api = run["api"]
    assert api["requests"] == 5
    assert 0 < api["p50_ms"] <= api["p99_ms"] <= api["max_ms"]
    assert set(api["queries_ms"]) == {name for name, _, _ in serve.QUERIES}
    compared = {name for name, _, cli in serve.QUERIES if cli}
    assert set(run["cli"]) == compared
    for name in compared:
        assert positive(run["cli"][name]["ms"]) and positive(run["cli"][name]["ratio"])
        assert run["cli"][name]["same"] is True
        assert figures["medians"][f"ratio.{name}"] == run["cli"][name]["ratio"]


def test_idle_cpu_memory_and_start(figures: dict[str, Any]) -> None:
    (run,) = figures["runs"]
    idle = run["idle"]
    assert idle["stream_on"] and idle["window_s"] >= 1
    assert 0 <= idle["cpu_pct"] < 100
    assert 0 < run["rss"]["now_mb"] <= run["rss"]["peak_mb"]
    assert positive(run["start_s"])
    assert figures["lake"]["usage_files"] > 0
    assert set(figures["goals"]) == {"tile_ms", "cpu_pct"}
