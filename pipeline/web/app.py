"""The dashboard as an ASGI app (Starlette): the page and its files, the JSON API that
answers as the CLI does, the event stream, and the token check."""

from __future__ import annotations

import asyncio
import functools
import hmac
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from starlette.applications import Starlette
from starlette.datastructures import URL
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.budget_view import budget_rows
from pipeline.charts import MEASURES, cache_dir, javascript_bundle, usage_spec
from pipeline.config import Home
from pipeline.dashboard import Changes, alerts_view, live_view, overview, quarantine_view, today_in
from pipeline.errors import InternalError, TallyError, UsageError
from pipeline.progress import STATUSES, run_progress
from pipeline.query import COST_MODES, check_timezone
from pipeline.records import csv_text, json_records, json_text
from pipeline.reports import run_report
from pipeline.web.params import Params, report_query

STATIC = Path(__file__).parent / "static"
TOKEN_COOKIE = "tally_token"
POLL_SECONDS = 0.25  # how often the stream looks for new batches: well within 2 s
KEEP_ALIVE_SECONDS = 15.0
SECURITY_HEADERS = {
    # Everything the page loads comes from this server: no CDN, nothing else.
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-eval'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The current moment, in UTC."""
    return datetime.now(UTC)


def status_of(error: TallyError) -> int:
    """The HTTP status of an error: the caller's (400) for a usage error, else ours (500)."""
    return 400 if isinstance(error, UsageError) or error.exit_code == 2 else 500


def error_response(error: TallyError) -> JSONResponse:
    """An error as JSON: its one-line message and hint, never a traceback."""
    return JSONResponse({"error": error.message, "hint": error.hint}, status_of(error))


def answers(endpoint: Callable[[Any, Request], Response]) -> Callable[[Any, Request], Response]:
    """An endpoint whose TallyError, or any other failure, becomes a JSON error response."""
    @functools.wraps(endpoint)
    def wrapper(self: Any, request: Request) -> Response:
        try:
            return endpoint(self, request)
        except TallyError as error:
            return error_response(error)
        except Exception as error:
            if os.environ.get("TALLY_DEBUG") == "1":
                raise
            return error_response(InternalError(error))

    return wrapper


def json_response(value: Any) -> Response:
    """A value as the CLI prints it with --format json (the same bytes)."""
    return Response(json_text(value) + "\n", media_type="application/json")


class Api:
    """The JSON endpoints: each checks its parameters, calls one library function."""

    def __init__(self, home: Home, clock: Clock) -> None:
        self.home = home
        self.clock = clock
        self.stopping = threading.Event()
        self._bundle: bytes | None = None

    def bundle(self) -> bytes:
        """Vega-Embed and its libraries, made once per process (see charts)."""
        if self._bundle is None:
            self._bundle = javascript_bundle(cache_dir())
        return self._bundle

    @answers
    def report(self, request: Request) -> Response:
        """/api/report: `tally report --format json` (or csv)."""
        params = _all_params(request)  # report_query checks the names
        query = report_query(params)
        fmt = params.choice("format", ("json", "csv"), "json")
        result = run_report(self.home, query)
        # Percent-encoded: a header is Latin-1 without line breaks, a model name anything.
        headers = {"X-Tally-Unpriced-Models": ",".join(quote(model, safe="")
                                                       for model in result.unpriced_models)}
        if fmt == "csv":
            return Response(csv_text(result.rows), media_type="text/csv", headers={
                **headers, "Content-Disposition": 'attachment; filename="tally-report.csv"'})
        response = json_response(json_records(result.rows))
        response.headers.update(headers)
        return response

    @answers
    def chart(self, request: Request) -> Response:
        """/api/chart: the Vega-Lite spec of a report's stacked bars (`measure`)."""
        params = _all_params(request)
        query = report_query(params, extra=("measure",))
        measure = params.choice("measure", tuple(MEASURES), "cost")
        records = json_records(run_report(self.home, query).rows)
        return JSONResponse(usage_spec(records, query.by, measure, since=query.since,
                                       until=query.until))

    @answers
    def overview(self, request: Request) -> Response:
        """/api/overview: today, this week and this month (`date`, `tz`, `cost-mode`)."""
        params = _params(request, "date", "tz", "cost-mode")
        tz = check_timezone(params.text("tz", self.home.budgets.tz) or "")
        day = params.day("date") or today_in(tz, self.clock())
        return json_response(overview(self.home, day, tz,
                                      params.choice("cost-mode", COST_MODES, "auto")))

    @answers
    def live(self, request: Request) -> Response:
        """/api/live: burn rate, block, budget states and latest tasks (live.json)."""
        _params(request)
        return json_response(live_view(self.home, self.clock()))

    @answers
    def budget(self, request: Request) -> Response:
        """/api/budget: `tally budget --format json` (`since`, `agent`)."""
        params = _params(request, "since", "agent")
        return json_response(budget_rows(self.home, self.clock(), params.day("since"),
                                         params.many("agent")))

    @answers
    def progress(self, request: Request) -> Response:
        """/api/progress: `tally progress --format json` (`agent`, `status`, `tz`)."""
        params = _params(request, "agent", "status", "tz")
        statuses = params.many("status")
        for status in statuses:
            if status not in STATUSES:
                raise UsageError(f"status={status!r} is not one of " + ", ".join(STATUSES))
        tz = check_timezone(params.text("tz", "UTC") or "")
        return json_response(json_records(run_progress(self.home, params.many("agent"),
                                                       statuses, tz)))

    @answers
    def alerts(self, request: Request) -> Response:
        """/api/alerts: the newest budget alerts (`limit`)."""
        params = _params(request, "limit")
        return json_response(alerts_view(self.home, params.count("limit", 200)))

    @answers
    def quarantine(self, request: Request) -> Response:
        """/api/quarantine: the newest quarantined lines (`limit`, `reason`)."""
        params = _params(request, "limit", "reason")
        return json_response(quarantine_view(self.home, params.count("limit", 200),
                                             params.text("reason")))

    async def stream(self, request: Request) -> Response:
        """/api/stream: server-sent events, one per committed batch (or other change)."""
        try:
            _params(request)
        except UsageError as error:
            return error_response(error)
        changes = Changes(self.home)
        return StreamingResponse(self._events(changes), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    async def _events(self, changes: Changes) -> AsyncIterator[str]:
        yield "retry: 1000\n\nevent: hello\ndata: {}\n\n"
        quiet = 0.0
        while not self.stopping.is_set():
            await asyncio.sleep(POLL_SECONDS)
            found = changes.look()
            for change in found:
                yield f"event: {change['kind']}\ndata: {orjson.dumps(change).decode()}\n\n"
            quiet = 0.0 if found else quiet + POLL_SECONDS
            if quiet >= KEEP_ALIVE_SECONDS:  # proxies drop a silent connection
                quiet = 0.0
                yield ": keep-alive\n\n"

    def vega(self, request: Request) -> Response:
        """/static/vega-embed.js, from vl-convert's offline copies."""
        return Response(self.bundle(), media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})


def _params(request: Request, *allowed: str) -> Params:
    """The request's parameters, checked against the names the endpoint takes."""
    params = _all_params(request)
    params.check_names(allowed)
    return params


def _all_params(request: Request) -> Params:
    return Params.of(request.query_params.multi_items())


def index(request: Request) -> Response:
    """The single page; its script draws each view from the API."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


class TokenCheck:
    """ASGI middleware: every request carries the token (a Bearer header, the cookie, or
    `?token=` once, which sets the cookie and is taken off the address), else 401."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        header = request.headers.get("authorization", "")
        from_query = request.query_params.get("token")
        cookie = token_cookie(request.url.port)
        given = (header[7:] if header.lower().startswith("bearer ") else
                 from_query or request.cookies.get(cookie, ""))
        if not hmac.compare_digest(given.encode(), self.token):
            response: Response = JSONResponse(
                {"error": "this dashboard needs its token",
                 "hint": "open /?token=TOKEN once in the browser, or send the header "
                         "'Authorization: Bearer TOKEN'"}, 401,
                headers={"WWW-Authenticate": 'Bearer realm="tally"'})
        elif from_query is not None and request.method == "GET":
            response = RedirectResponse(_without_token(request.url), 303)
            response.set_cookie(cookie, from_query, httponly=True, samesite="strict")
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


def token_cookie(port: int | None) -> str:
    """The cookie that holds the token: one per port, as cookies are shared by every port
    of a host."""
    return f"{TOKEN_COOKIE}_{port or 80}"


def _without_token(url: URL) -> str:
    kept = url.remove_query_params("token")
    path = "/" + kept.path.lstrip("/")  # "//host/" would send the browser to another site
    return path + (f"?{kept.query}" if kept.query else "")


class SecurityHeaders:
    """ASGI middleware: the headers that keep the page to its own files."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *(
                    (k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items())]
            await send(message)

        await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)


def create_app(home: Home, token: str = "", clock: Clock = utc_now,
               hosts: Sequence[str] = ("*",)) -> tuple[Starlette, Api]:
    """The dashboard app over a home, and its Api (whose `stopping` ends the streams);
    requests naming another host than `hosts` get a 400 (DNS rebinding)."""
    api = Api(home, clock)
    routes = [
        Route("/", index),
        *(Route(f"/api/{name}", getattr(api, name)) for name in (
            "report", "chart", "overview", "live", "budget", "progress", "alerts",
            "quarantine", "stream")),
        Route("/static/vega-embed.js", api.vega),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))
    if token:
        app.add_middleware(TokenCheck, token=token)
    return app, api
