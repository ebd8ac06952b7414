"""`clarus-pipelines dashboard`: serve the Streamlit health dashboard (the operations team's view).

The same app `demo` starts, found inside the installed package, so an image or a wheel
install needs no source tree: `clarus-pipelines dashboard --host 0.0.0.0 --port 8501`.
It reads snapshot copies of the state (CLARUS_PIPELINES_STATE_DB or CLARUS_PIPELINES_HOME);
`GET /_stcore/health` is its health check.
"""

from __future__ import annotations

import argparse
import os
import sys

from clarus_pipelines.settings import package_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8501, help="port to bind (default 8501)")


def streamlit_argv(host: str, port: int) -> list[str]:
    """The Streamlit command line: headless, no usage statistics, no error details for visitors."""
    return [
        sys.executable, "-m", "streamlit", "run", str(package_file("clarus_pipelines.dashboards", "app.py")),
        "--server.headless", "true", "--server.address", host, "--server.port", str(port),
        "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal", "--client.showErrorDetails", "false",
    ]


def run(args: argparse.Namespace) -> int:
    argv = streamlit_argv(args.host, args.port)
    os.execv(argv[0], argv)  # Streamlit becomes this process: signals and exit code are its own
    return 0  # not reached
