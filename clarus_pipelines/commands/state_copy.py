"""`clarus-pipelines state-copy --from FILE`: move a single-host DuckDB state into PostgreSQL.

The target is `$CLARUS_PIPELINES_STATE_URL` (a postgresql:// URL; `--to` overrides it, but a
password is better kept out of the command line). Stop the Dagster daemon and the receiver
first; landings the receiver acknowledged must be ingested (`clarus-pipelines ingest`) before,
since PostgreSQL mode reads its webhook inbox, not the landing zone. `state/transfer.py` says
what is copied and what is refused. Prints what was copied as JSON; exit 0 when copied, 1 when
refused (nothing written), 2 when it cannot run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clarus_pipelines.commands.output import CANNOT_RUN, FOUND_PROBLEMS, OK, emit, fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", type=Path, required=True, help="the DuckDB state file to copy")
    parser.add_argument("--to", dest="target", default=None,
                        help="the PostgreSQL state (default $CLARUS_PIPELINES_STATE_URL)")
    parser.add_argument("--landing-dir", type=Path, default=None,
                        help="the DuckDB deployment's landing zone, checked for landings not yet ingested "
                             "(default $CLARUS_PIPELINES_LANDING_DIR or $CLARUS_PIPELINES_HOME/landing)")


def run(args: argparse.Namespace) -> int:
    from clarus_pipelines.settings import Settings
    from clarus_pipelines.state.pg import is_postgres_url, masked_url
    from clarus_pipelines.state.transfer import StateCopyRefused, copy_state

    settings = Settings()
    target = args.target or settings.inbox_url
    if not target or not is_postgres_url(target):
        return fail("state-copy", "no PostgreSQL target: set CLARUS_PIPELINES_STATE_URL=postgresql://... (or --to)",
                    code=CANNOT_RUN)
    if not args.source.is_file():
        return fail("state-copy", f"no DuckDB state at {args.source}", code=CANNOT_RUN)
    try:
        _refuse_unread_landings(args.landing_dir or settings.landing_path, args.source)
        report = copy_state(args.source, target)
    except StateCopyRefused as exc:
        return fail("state-copy", f"refused, nothing written: {exc}", code=FOUND_PROBLEMS)
    emit({"ok": True, "from": str(args.source), "to": masked_url(target), **report.as_json()})
    return OK


def _refuse_unread_landings(landing_dir: Path, source: Path) -> None:
    """Landings the single host acknowledged and ingest has not read would be left behind."""
    from clarus_pipelines.receiver.events import unread_landings
    from clarus_pipelines.receiver.landing import LandingZone
    from clarus_pipelines.state import StateStore
    from clarus_pipelines.state.transfer import StateCopyRefused

    if not landing_dir.exists():
        return
    unread = unread_landings(LandingZone(landing_dir), StateStore(source), limit=1000)
    if unread:
        raise StateCopyRefused(
            f"{len(unread)}{'+' if len(unread) == 1000 else ''} landings in {landing_dir} are not ingested yet"
            f" (the oldest {unread[0]}): stop the receiver, run `clarus-pipelines ingest`, then copy")
