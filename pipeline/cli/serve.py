"""`tally serve`: the dashboard."""

from __future__ import annotations

import click

from pipeline.cli.options import home_option, say
from pipeline.config import Home


@click.command()
@click.option("--host", default=None, metavar="ADDRESS",
              help="address to listen on [default: [serve] host, else 127.0.0.1]; any "
                   "address but loopback needs a token")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="port [default: [serve] port, else 8787; 0: any free port]")
@click.option("--token", default=None, metavar="SECRET", envvar="TALLY_SERVE_TOKEN",
              help="the token every request must carry [env: TALLY_SERVE_TOKEN; default: "
                   "[serve] token]")
@home_option
def serve(home: Home, host: str | None, port: int | None, token: str | None) -> None:
    """Serve the dashboard: overview, usage over time, breakdown, tasks, alerts and
    quarantine, updated live as batches land, and a JSON API that answers as the CLI does.

    The pages show what `tally report`, `tally budget` and `tally progress` would print;
    they update within 2 s of a batch committed by a running `tally run` or `tally tail`
    (server-sent events at /api/stream). /api/report?by=agent,day&since=2025-08-01 returns
    what `tally report --by agent,day --since 2025-08-01 --format json` prints.

    With a token, open http://HOST:PORT/?token=SECRET once in a browser (it sets a
    cookie); scripts send "Authorization: Bearer SECRET". Ctrl-C stops.

    \b
    Examples:
      tally serve                                   # http://127.0.0.1:8787/
      tally serve --host 0.0.0.0 --token "$(openssl rand -hex 16)"
      curl -s 'http://127.0.0.1:8787/api/report?by=agent&since=2025-08-01'
    """
    from pipeline.web.server import serve as serve_dashboard

    serve_dashboard(home, host or home.serve.host, home.serve.port if port is None else port,
                    token or "", lambda url: say(f"tally serve: {url} (Ctrl-C stops)"))
