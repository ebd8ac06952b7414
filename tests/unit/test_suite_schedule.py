"""The suite's own schedule: its two longest tests, the rehearsals, are the first modules the two
xdist workers take, so they run beside each other from the start and not one after the other."""

import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from suite_schedule import heaviest_modules_first

REPO = Path(__file__).resolve().parents[2]


def _item(path: str, *, slow: bool = False, timeout: float | None = None) -> SimpleNamespace:
    markers = {"timeout": pytest.mark.timeout(timeout).mark} if timeout else {}
    return SimpleNamespace(path=REPO / path, keywords={"slow": True} if slow else {}, get_closest_marker=markers.get)


def test_the_rehearsal_modules_lead_the_collection():
    items = [
        _item("tests/e2e/test_receiver.py"),
        _item("tests/e2e/test_simulate.py"),
        _item("tests/e2e/test_simulate.py", slow=True, timeout=900),
        _item("tests/e2e/test_run_worker.py", slow=True, timeout=600),
        _item("tests/e2e/test_simulate_postgres.py", slow=True, timeout=900),
        _item("tests/e2e/test_wheel.py", slow=True),
        _item("tests/unit/test_lanes.py"),
    ]
    modules = list(dict.fromkeys(item.path.name for item in heaviest_modules_first(items)))
    assert modules == ["test_simulate.py", "test_simulate_postgres.py", "test_run_worker.py", "test_wheel.py",
                       "test_receiver.py", "test_lanes.py"]


def test_xdist_keeps_that_order():
    """By default `--dist loadscope` sorts modules by their number of tests, which put the one-test
    PostgreSQL rehearsal near the end of the run."""
    addopts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"].split()
    assert "loadscope" in addopts and "--no-loadscope-reorder" in addopts
