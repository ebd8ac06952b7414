"""The shared sandbox world of the flow tests (tests/world.py).

`world`: a local world per test (three sandboxes in this process, the real receiver, an empty
state); a test module sets its options in `WORLD_OPTIONS` (e.g. Shopify's webhooks on) and may name
a subclass with its flow's own helpers in `WORLD_CLASS`. A module
that needs the costlier trio (`World.trio`, the item master synced) opens it once at module scope
under its own fixture and gives each test `world.fork(tmp_path)`.

State backends: a module that sets `STATE_BACKENDS = ("duckdb", "postgres")` runs each test that
uses `world`, `state` or `state_backend` once per backend; PostgreSQL runs get a fresh database, dropped
after the test, and the `postgres` marker. Other modules run on the DuckDB file only. A test
marked `@pytest.mark.state_backends("duckdb", "postgres")` runs on those whatever its module says
(where running a costly module twice over would buy little).
"""

from __future__ import annotations

import pytest

from pgstate import state_base
from world import World


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "state_backend" not in metafunc.fixturenames:
        return
    chosen = metafunc.definition.get_closest_marker("state_backends")
    backends = chosen.args if chosen else getattr(metafunc.module, "STATE_BACKENDS", ("duckdb",))
    if tuple(backends) == ("duckdb",):
        return
    scope = getattr(metafunc.module, "STATE_BACKEND_SCOPE", "function")
    metafunc.parametrize(
        "state_backend",
        [pytest.param(b, marks=pytest.mark.postgres) if b == "postgres" else b for b in backends],
        indirect=True, scope=scope,
    )


@pytest.fixture(scope="module")
def state_backend(request) -> str:
    """'duckdb' or 'postgres' (see STATE_BACKENDS)."""
    return getattr(request, "param", "duckdb")


@pytest.fixture
def state(tmp_path, state_backend):
    """The test's own state: a DuckDB file, or a fresh PostgreSQL database (dropped after)."""
    with state_base(state_backend, tmp_path) as target:
        yield target


@pytest.fixture
def world(request, tmp_path, state_backend):
    kind = getattr(request.module, "WORLD_CLASS", World)
    with state_base(state_backend, tmp_path) as state:  # a DuckDB file, or a fresh database dropped after
        w = kind.local(tmp_path, state=state, **getattr(request.module, "WORLD_OPTIONS", {}))
        yield w
        w.close()
