"""The dashboard app through Starlette's TestClient: the API answers as the CLI does (a
differential check over query parameters), malformed parameters get a 400 with a message,
the token check, and the page's files (nothing from another origin)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

import orjson
import pytest
from click.testing import CliRunner
from conftest import event, make_home
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from test_cli_report import tailed_samples

from pipeline.charts import cache_dir
from pipeline.cli import main
from pipeline.config import Home
from pipeline.query import GROUP_KEYS
from pipeline.web.app import STATIC, create_app, token_cookie
from pipeline.web.server import allowed_hosts

AGENTS = ("claude", "codex", "gemini", "cursor", "yolo", "nobody")
ZONES = ("UTC", "Europe/Istanbul", "America/Los_Angeles", "Asia/Kolkata")
DAYS = [f"2025-08-{day:02d}" for day in range(20, 32)]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """sample_logs/ tailed into a home (staged, not compacted)."""
    return tailed_samples(tmp_path_factory.mktemp("web") / "home")


@pytest.fixture(scope="module")
def client(sample: Home) -> Iterator[TestClient]:
    app, _ = create_app(sample, clock=lambda: datetime(2025, 8, 29, 18, tzinfo=UTC))
    with TestClient(app) as test_client:
        yield test_client


def cli(home: Home, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*args, "--home", str(home.root)])
    return result.exit_code, result.stdout


# ---------------------------------------------------------------- the API is the CLI


@st.composite
def report_options(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Options of `tally report` as (name, value) pairs, some of them malformed."""
    options = [("by", ",".join(draw(st.lists(st.sampled_from(GROUP_KEYS), min_size=1,
                                              max_size=3, unique=True))))]
    for name in ("since", "until"):
        if draw(st.booleans()):
            options.append((name, draw(st.sampled_from(DAYS))))
    for agent in draw(st.lists(st.sampled_from(AGENTS), max_size=2, unique=True)):
        options.append(("agent", agent))
    if draw(st.booleans()):
        options.append(("model", draw(st.sampled_from(("gpt-5", "claude-sonnet-4-5",
                                                        "gemini-2.5-pro")))))
    if draw(st.booleans()):
        options.append(("role", draw(st.sampled_from(("dev", "reviewer", "planner")))))
    if draw(st.booleans()):
        options.append(("phase", draw(st.sampled_from(("1", "2", "3")))))
    options.append(("tz", draw(st.sampled_from(ZONES))))
    if draw(st.booleans()):
        options.append(("cost-mode", draw(st.sampled_from(("auto", "calculate")))))
    return options


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=report_options())
def test_api_report_is_what_the_cli_prints(sample: Home, client: TestClient,
                                          options: list[tuple[str, str]]) -> None:
    code, printed = cli(sample, "report", "--format", "json",
                        *(arg for name, value in options for arg in (f"--{name}", value)))
    response = client.get("/api/report", params=options)
    if code == 2:  # since after until: both refuse it
        assert response.status_code == 400, response.text
        assert "since" in response.json()["error"]
        return
    assert code == 0
    assert response.status_code == 200
    assert response.text == printed  # byte for byte


def test_api_report_csv_is_what_the_cli_prints(sample: Home, client: TestClient) -> None:
    code, printed = cli(sample, "report", "--by", "agent,model", "--format", "csv")
    response = client.get("/api/report", params={"by": "agent,model", "format": "csv"})
    assert code == 0 and response.status_code == 200
    assert response.text == printed
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]


def test_api_report_names_unpriced_models(client: TestClient) -> None:
    response = client.get("/api/report", params={"by": "model"})
    assert "local-llama-3-8b" in response.headers["x-tally-unpriced-models"]


@pytest.mark.parametrize("endpoint,args", [
    ("/api/budget", ["budget", "--format", "json"]),
    ("/api/progress", ["progress", "--format", "json"]),
    ("/api/progress?status=in_progress&tz=Asia/Tokyo",
     ["progress", "--status", "in_progress", "--tz", "Asia/Tokyo", "--format", "json"]),
])
def test_other_endpoints_answer_as_their_commands(sample: Home, client: TestClient,
                                                  endpoint: str, args: list[str]) -> None:
    code, printed = cli(sample, *args)
    response = client.get(endpoint)
    assert code == 0 and response.status_code == 200
    if endpoint == "/api/budget":  # used and burn move with the clock: compare the budgets
        keys = ("scope", "period", "metric", "budget")
        assert ([{k: r[k] for k in keys} for r in response.json()]
                == [{k: r[k] for k in keys} for r in orjson.loads(printed)])
    else:
        assert response.text == printed


def test_overview_sums_the_report_per_period(sample: Home, client: TestClient) -> None:
    overview = client.get("/api/overview", params={"date": "2025-08-29", "tz": "UTC"}).json()
    for period, since in (("today", "2025-08-29"), ("week", "2025-08-25"),
                          ("month", "2025-08-01")):
        _, printed = cli(sample, "report", "--by", "agent", "--since", since,
                         "--until", "2025-08-29", "--format", "json")
        rows = orjson.loads(printed)
        assert overview[period]["total_tokens"] == sum(r["total_tokens"] for r in rows)
        assert overview[period]["events"] == sum(r["events"] for r in rows)
        assert [a["agent"] for a in overview[period]["agents"]] == [r["agent"] for r in rows]
    assert overview["today"]["total_tokens"] < overview["week"]["total_tokens"]


def test_overview_defaults_to_today_in_the_budget_zone(client: TestClient) -> None:
    overview = client.get("/api/overview").json()
    assert overview["date"] == "2025-08-29" and overview["tz"] == "UTC"  # the test's clock


def test_chart_is_a_stacked_vega_lite_spec_of_the_report(client: TestClient) -> None:
    spec = client.get("/api/chart", params={"by": "day,agent", "measure": "tokens"}).json()
    assert spec["mark"]["type"] == "bar" and spec["encoding"]["x"]["field"] == "period"
    report = client.get("/api/report", params={"by": "day,agent"}).json()
    assert (sum(p["tokens"] for p in spec["data"]["values"])
            == sum(r["total_tokens"] for r in report))


def test_quarantine_and_alerts_answer(client: TestClient) -> None:
    quarantine = client.get("/api/quarantine").json()
    assert quarantine["total"] == 0 and quarantine["rows"] == []  # tailed without invalid/
    alerts = client.get("/api/alerts", params={"limit": "5"}).json()
    assert set(alerts) == {"total", "pending_delivery", "rows"}


# ---------------------------------------------------------------- malformed parameters


@pytest.mark.parametrize("endpoint,params,says", [
    ("/api/report", {"by": "agent,colour"}, "cannot group by colour"),
    ("/api/report", {"sinse": "2025-08-01"}, "unknown parameter 'sinse'"),
    ("/api/report", {"since": "2025-8-32"}, "is not a date"),
    ("/api/report", {"since": "2025-08-30", "until": "2025-08-01"}, "is after"),
    ("/api/report", {"tz": "Mars/Olympus"}, "unknown time zone"),
    ("/api/report", {"tz": "localtime"}, "unknown time zone"),
    ("/api/report", {"since": "0001-01-01"}, "out of range"),
    ("/api/report", {"until": "9999-12-31", "tz": "Pacific/Kiritimati"}, "out of range"),
    ("/api/overview", {"date": "9999-12-31"}, "out of range"),
    ("/api/budget", {"since": "0001-01-01"}, "out of range"),
    ("/api/report", {"cost-mode": "guess"}, "cost-mode='guess'"),
    ("/api/report", {"format": "xml"}, "format='xml'"),
    ("/api/report", [("by", "agent"), ("by", "day")], "given 2 times"),
    ("/api/chart", {"measure": "joules"}, "measure='joules'"),
    ("/api/overview", {"date": "yesterday"}, "is not a date"),
    ("/api/progress", {"status": "sleeping"}, "status='sleeping'"),
    ("/api/quarantine", {"limit": "-3"}, "limit='-3'"),
    ("/api/alerts", {"limit": "many"}, "limit='many'"),
    ("/api/live", {"x": "1"}, "unknown parameter 'x'"),
    ("/api/stream", {"x": "1"}, "unknown parameter 'x'"),
])
def test_malformed_parameters_get_a_400_with_a_message(client: TestClient, endpoint: str,
                                                       params: object, says: str) -> None:
    response = client.get(endpoint, params=params)  # type: ignore[arg-type]
    assert response.status_code == 400, response.text
    body = response.json()
    assert says in body["error"], body
    assert "Traceback" not in response.text


def test_a_failure_inside_is_a_500_in_one_line(tmp_path: Path) -> None:
    home = make_home(tmp_path / "home")
    (home.lake / "agent_token_usage" / "_delta_log").mkdir(parents=True)
    (home.lake / "agent_token_usage" / "_delta_log" / "00000000000000000000.json").write_text(
        "not json")
    app, _ = create_app(home)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        response = test_client.get("/api/report")
    assert response.status_code == 500
    assert response.json()["error"] and "Traceback" not in response.text


# ---------------------------------------------------------------- token


@pytest.fixture
def guarded(home: Home) -> Iterator[TestClient]:
    app, _ = create_app(home, token="s3cret")
    with TestClient(app, follow_redirects=False) as test_client:
        yield test_client


@pytest.mark.parametrize("path", ["/", "/api/report", "/api/stream", "/static/app.js"])
def test_without_the_token_every_path_is_401(guarded: TestClient, path: str) -> None:
    response = guarded.get(path)
    assert response.status_code == 401
    assert "token" in response.json()["error"]
    assert guarded.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_the_token_as_bearer_header_opens_the_api(guarded: TestClient) -> None:
    response = guarded.get("/api/report", headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 200 and response.json() == []


def test_a_redirect_stays_on_this_server(guarded: TestClient) -> None:
    response = guarded.get("//evil.example/?token=s3cret")
    assert response.status_code == 303 and response.headers["location"] == "/"


def test_the_cookie_is_this_ports_own(home: Home) -> None:
    app, _ = create_app(home, token="s3cret")
    with TestClient(app, base_url="http://127.0.0.1:9001", follow_redirects=False) as other:
        response = other.get("/?token=s3cret")
    assert response.headers["set-cookie"].startswith(f"{token_cookie(9001)}=s3cret")


def test_on_loopback_another_host_name_is_refused(home: Home) -> None:
    app, _ = create_app(home, hosts=allowed_hosts("127.0.0.1"))
    with TestClient(app, base_url="http://127.0.0.1:8787") as local:
        assert local.get("/api/report").status_code == 200
        assert local.get("/api/report", headers={"Host": "localhost:8787"}).status_code == 200
        rebound = local.get("/api/report", headers={"Host": "attacker.example:8787"})
    assert rebound.status_code == 400
    assert allowed_hosts("0.0.0.0") == ("*",)
    assert "[::1]" in allowed_hosts("::1")


def test_a_model_name_no_header_can_hold_is_encoded(tmp_path: Path) -> None:
    root = tmp_path / "home"
    home = make_home(root)
    (home.logs / "a.jsonl").write_bytes(
        b"".join(orjson.dumps(event(model=model)) + b"\n" for model in ("模型-x", "a\r\nb")))
    run = CliRunner().invoke(main, ["tail", "--once", "--quiet", "--home", str(root)])
    assert run.exit_code == 0, run.output
    app, _ = create_app(home)
    with TestClient(app) as local:
        response = local.get("/api/report", params={"by": "model"})
    assert response.status_code == 200
    named = response.headers["x-tally-unpriced-models"].split(",")
    assert sorted(unquote(name) for name in named) == ["a\r\nb", "模型-x"]


def test_the_token_in_the_address_sets_a_cookie_and_is_taken_off(guarded: TestClient) -> None:
    response = guarded.get("/?token=s3cret&x=1")
    assert response.status_code == 303
    assert response.headers["location"] == "/?x=1"
    assert f"{token_cookie(None)}=s3cret" in response.headers["set-cookie"]
    assert "httponly" in response.headers["set-cookie"].lower()
    page = guarded.get("/")  # the client keeps the cookie
    assert page.status_code == 200 and "<title>tally</title>" in page.text


# ---------------------------------------------------------------- the page's files


def test_the_page_loads_nothing_from_another_origin(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for text in (page.text, *(p.read_text() for p in STATIC.iterdir())):
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
        assert "cdn" not in text.lower()
    sources = re.findall(r'(?:src|href)="(/[^"]+)"', page.text)
    assert "/static/vega-embed.js" in sources
    for source in sources:
        assert client.get(source).status_code == 200, source


def test_the_vega_bundle_is_served_and_cached(client: TestClient) -> None:
    script = client.get("/static/vega-embed.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert b"window.vegaEmbed" in script.content and len(script.content) > 100_000
    assert list(cache_dir().glob("vega-embed-*.js"))
