"""`clarus-pipelines` console script.

Each subcommand lives in its own module exposing `add_arguments(parser)` and
`run(args) -> int`; modules are imported only for the command being run, so
`clarus-pipelines receiver` does not pay for importing Dagster.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "clarus_pipelines.commands.demo",
        "Run the whole stack on embedded defaults: sandbox, webhook receiver, Dagster webserver and daemon, dashboard, generated traffic.",
    ),
    "dashboard": (
        "clarus_pipelines.commands.dashboard",
        "Serve the Streamlit health dashboard (what a deployment runs; `demo` starts it too).",
    ),
    "sandbox": (
        "clarus_pipelines.commands.sandbox",
        "Serve local Clarus, Shopify and NetSuite look-alikes (with traffic generator and fault injection).",
    ),
    "receiver": (
        "clarus_pipelines.commands.receiver",
        "Serve the webhook receiver: verify, store durably, acknowledge.",
    ),
    "replay": (
        "clarus_pipelines.commands.replay",
        "Re-submit landed or quarantined webhooks through the receiver path (idempotent).",
    ),
    "check-config": (
        "clarus_pipelines.commands.check_config",
        "Validate the environment settings and the policies YAML; name the offending key on error.",
    ),
    "runbook": (
        "clarus_pipelines.commands.runbook",
        "Write (or --check) docs/runbook.md from the exception catalogue.",
    ),
    "explain-order": (
        "clarus_pipelines.commands.explain_order",
        "Print as JSON what the pipeline would do with a Shopify order now (ready/held, reasons, goods out).",
    ),
    "explain-refund": (
        "clarus_pipelines.commands.explain_refund",
        "Print as JSON how a Shopify refund is classified (return, cancellation, goodwill...), why, and what follows.",
    ),
    "audit": (
        "clarus_pipelines.commands.audit",
        "Audit the connected systems and our state for gaps (item master, ship methods, stock, webhooks, orders, "
        "refunds, configuration); exit 1 when there are go-live blockers.",
    ),
    "shopify-webhooks": (
        "clarus_pipelines.commands.shopify_webhooks",
        "sync: make the shop's webhook subscriptions match the topics we consume and the receiver's URL (--dry-run).",
    ),
    "simulate": (
        "clarus_pipelines.commands.simulate",
        "Rehearse a sale day: run the whole integration against the sandbox with faults and print what happened as JSON.",
    ),
    # --- intake that never stalls (issue 12) ---
    "ingest": (
        "clarus_pipelines.commands.ingest",
        "Take what is in the landing zone into the state store (the ingest run's code); exit 0 when nothing is stalled.",
    ),
    "intake-status": (
        "clarus_pipelines.commands.intake_status",
        "Print per source as JSON: acknowledged, ingested, set aside with reasons, oldest unread landing, stalled.",
    ),
    "state-copy": (
        "clarus_pipelines.commands.state_copy",
        "Move a single-host DuckDB state into an empty PostgreSQL state (everything the flows keep; sequences resume).",
    ),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clarus-pipelines",
        description="Clarus WMS <-> Shopify <-> NetSuite integration, watched.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<16} {text}" for name, (_, text) in COMMANDS.items())
        + "\n\nRun 'clarus-pipelines COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clarus-pipelines")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv or ["--help"])  # --help and --version exit here
        return 2
    name, rest = argv[0], argv[1:]
    module_name, text = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        return _missing_extra(name, exc)
    parser = argparse.ArgumentParser(prog=f"clarus-pipelines {name}", description=text)
    module.add_arguments(parser)
    from clarus_pipelines.logs import LOG_FORMAT_ENV, LOG_FORMATS, configure_logging, log_format_from_env

    parser.add_argument("--log-format", choices=LOG_FORMATS, default=None,
                        help=f"log lines as text or JSON objects (default ${LOG_FORMAT_ENV} or text); "
                        "personal data is masked in both")
    args = parser.parse_args(rest)
    if args.log_format:
        os.environ[LOG_FORMAT_ENV] = args.log_format  # child processes (demo, receiver workers) log alike
    try:
        log_format = log_format_from_env()
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(log_format=log_format)
    from clarus_pipelines.settings import ConfigError

    try:
        return int(module.run(args) or 0)
    except ConfigError as exc:  # e.g. no policies file: a message naming the setting, not a traceback
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        return _missing_extra(name, exc)


SANDBOX_ONLY = {"graphql", "openapi_core"}  # the `sandbox` extra (pyproject.toml)


def _missing_extra(command: str, exc: ModuleNotFoundError) -> int:
    """The sandbox's look-alikes need packages a production install leaves out: say which extra."""
    if (exc.name or "").split(".")[0] not in SANDBOX_ONLY:
        raise exc
    print(f"clarus-pipelines {command}: needs the sandbox look-alikes, which are not installed: "
          "pip install 'clarus-pipelines[sandbox]'", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
