"""Budget alerts claimed across the hosts that share a lake: one host raises each.

Every host counts the same shared lake, so each may find the same crossing at the same
moment. Before raising one, a host claims its alert id in the lake's `_alerts` table: a
Delta commit of one row (alert id, host) carrying `Transaction("tally-alert-<hash>", 1)`.
A claim is made from a table version that lacks that transaction, and delta-rs refuses the
second of two commits with the same app id made from one version: so exactly one host's
claim lands, and the others read who holds it. The claim outlives a kill: a host that
claimed an alert and was killed before logging it finds its own claim and raises it.
"""

from __future__ import annotations

import hashlib

from pipeline.config import Home
from pipeline.errors import LakeError, native_stderr_captured
from pipeline.ledger import CLAIMS_DIR, open_table
from pipeline.storage import REMOTE_HINT, Location, wait_before_retry

CLAIMS_TABLE = CLAIMS_DIR
CLAIM_ATTEMPTS = 20
_owners: dict[tuple[str, str], str] = {}  # (lake, alert id) -> the host that claimed it


def claims_table(home: Home) -> Location:
    """Where the lake keeps the alerts' claims."""
    return home.lake_location / CLAIMS_TABLE


def claim_app(alert_id: str) -> str:
    """The Delta app id whose transaction marks an alert claimed."""
    return "tally-alert-" + hashlib.sha256(alert_id.encode()).hexdigest()[:32]


def alert_owner(home: Home, alert_id: str) -> str:
    """The host that raises an alert: this one, if no host claimed it before."""
    place = claims_table(home)
    key = (place.uri, alert_id)
    if key in _owners:
        return _owners[key]
    owner = _claim(place, alert_id, home.host)
    if owner:  # a claim whose row cannot be read is asked about again next time
        _owners[key] = owner
    return owner


def _claim(place: Location, alert_id: str, host: str) -> str:
    import polars as pl
    from deltalake import CommitProperties, Transaction, write_deltalake
    from deltalake.exceptions import CommitFailedError, DeltaError

    from pipeline.commits import plain_arrow
    from pipeline.maintenance import checkpoint_if_due

    app = claim_app(alert_id)
    row = pl.DataFrame({"alert_id": [alert_id], "host": [host]})
    for attempt in range(1, CLAIM_ATTEMPTS + 1):
        table = open_table(place)
        if table is None:  # made empty first: every claim is then made from a version
            try:
                with native_stderr_captured():
                    write_deltalake(place.uri, plain_arrow(row.head(0)), mode="error",
                                    storage_options=place.storage_options)
            except DeltaError:
                pass  # another host made it meanwhile
            continue
        if table.transaction_version(app) is not None:
            holders = pl.scan_delta(table).filter(pl.col("alert_id") == alert_id)
            found = holders.select("host").collect()
            return str(found["host"][0]) if found.height else ""
        try:
            with native_stderr_captured():
                write_deltalake(table, plain_arrow(row), mode="append",
                                commit_properties=CommitProperties(
                                    app_transactions=[Transaction(app, 1)]))
            checkpoint_if_due(table)  # a claim a commit: its log is read at every claim
            return host
        except CommitFailedError:  # another claim came first: read the table again
            wait_before_retry(attempt, longest=1.0, first=0.02)
        except DeltaError as exc:
            raise LakeError(f"cannot claim the alert {alert_id} in {place}: {exc}",
                            hint=REMOTE_HINT) from exc
    raise LakeError(f"cannot claim the alert {alert_id} in {place}: other claims kept "
                    "coming first", hint="the next budget check tries again")
